"""PyTorch reference of the CPU benchmark: ResNet-32 (option A) and MW-Net steps.

Only imported when `torch` is installed (it is not a dependency of the
package). The network is He et al.'s CIFAR ResNet-32 with option-A shortcuts
as in the MW-Net code (464,154 parameters with 10 classes); the meta
iteration is the official MW-Net algorithm written with
`torch.func.functional_call` + `torch.autograd.grad(create_graph=True)`
instead of its MetaModule copy of the network:

  Virtual-Train: θ̂ = θ − α ∇_θ Σ_i V(ℓ_i) ℓ_i / n   (graph kept)
  Meta-Train:    Adam step of V on the validation loss at θ̂
  Actual-Train:  SGD step of θ on Σ_i V(ℓ_i) ℓ_i / n with the updated V.
"""

import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + option-A shortcut, ReLU."""

  def __init__(self, in_planes: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.pad = planes - in_planes if (stride != 1 or in_planes != planes) else None
    self.stride = stride

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.pad is not None:
      x = F.pad(x[:, :, ::self.stride, ::self.stride],
                (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
    return F.relu(y + x)


class ResNet32(nn.Module):
  """CIFAR ResNet-(6n+2), n = 5, widths 16/32/64 (NCHW inputs)."""

  def __init__(self, num_classes: int = 10, width: int = 16, n: int = 5):
    super().__init__()
    self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(width)
    blocks, in_planes = [], width
    for s in range(3):
      for i in range(n):
        planes = width * 2**s
        blocks.append(BasicBlock(in_planes, planes, 2 if (s > 0 and i == 0) else 1))
        in_planes = planes
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(in_planes, num_classes)

  def forward(self, x):
    x = self.blocks(F.relu(self.bn(self.conv(x))))
    return self.fc(torch.mean(x, dim=(2, 3)))


class VNet(nn.Module):
  """MW-Net's weighting MLP 1 → 100 → 1 (ReLU, sigmoid)."""

  def __init__(self, hidden: int = 100):
    super().__init__()
    self.hidden, self.out = nn.Linear(1, hidden), nn.Linear(hidden, 1)

  def forward(self, losses):
    return torch.sigmoid(self.out(F.relu(self.hidden(losses))))


class Steps:
  """The plain step and the MW-Net iteration on one model, SGD lr 0.05 / Adam 1e-3."""

  def __init__(self, model: nn.Module, lr: float = 0.05):
    self.model, self.vnet, self.lr = model, VNet(), lr
    self.opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=5e-4)
    self.meta_opt = torch.optim.Adam(self.vnet.parameters(), 1e-3, weight_decay=1e-4)

  def plain(self, x, y):
    loss = F.cross_entropy(self.model(x), y)
    self.opt.zero_grad()
    loss.backward()
    self.opt.step()
    return loss.detach()

  def meta(self, x, y, x_val, y_val):
    params = dict(self.model.named_parameters())
    buffers = dict(self.model.named_buffers())
    logits = torch.func.functional_call(self.model, (params, buffers), (x,))
    cost = F.cross_entropy(logits, y, reduction='none')[:, None]
    virtual_loss = torch.sum(cost * self.vnet(cost.detach())) / len(cost)
    grads = torch.autograd.grad(virtual_loss, list(params.values()), create_graph=True)
    params_hat = {k: p - self.lr * g for (k, p), g in zip(params.items(), grads)}
    val_logits = torch.func.functional_call(self.model, (params_hat, buffers), (x_val,))
    self.meta_opt.zero_grad()
    F.cross_entropy(val_logits, y_val).backward()
    self.meta_opt.step()
    cost = F.cross_entropy(self.model(x), y, reduction='none')[:, None]
    with torch.no_grad():
      weights = self.vnet(cost)
    loss = torch.sum(cost * weights) / len(cost)
    self.opt.zero_grad()
    loss.backward()
    self.opt.step()
    return loss.detach()


def param_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())

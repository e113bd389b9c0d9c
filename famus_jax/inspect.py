"""Which labels are wrong: the top suspects of a training run, and a picture of them.

  python -m famus_jax.inspect --workdir=/tmp/famus_digits
  python -m famus_jax.inspect --workdir=/tmp/famus_digits --checkpoint=380 --top=48

Reads the per-example record of the run's newest checkpoint (or of
`--checkpoint=STEP`), ranks the training examples by how likely their given
label is wrong (`famus_jax.analysis.label_issues`), prints the top suspects and,
when the true labels are known (synthetic noise), how well the ranking finds the
realised noise; writes `label_issues.csv` and `label_issues.png` (a grid of the
top-N images: given → predicted label, and the true one when known) into the
workdir — `label_issues_step<STEP>.{csv,png}` for `--checkpoint`. Exit codes: 0
done; 1 with a one-line error (no run or no checkpoint in the workdir, no such
checkpoint, a run trained on another data set than its config loads now, data
set missing, the table or picture cannot be written).
"""

import argparse
import os
import sys

from famus_jax.analysis import grid, label_issues, runs
from famus_jax.training.writes import WriteError


class _Parser(argparse.ArgumentParser):
  """argparse with the command line's one-line errors (exit 1)."""

  def error(self, message):
    print(f'famus_jax: error: {message}', file=sys.stderr)
    sys.exit(1)


def parse_args(argv):
  p = _Parser(prog='python -m famus_jax.inspect', description=__doc__.splitlines()[0])
  p.add_argument('--workdir', required=True, help='The workdir of a training run.')
  p.add_argument('--checkpoint', type=int, default=None,
                 help='The checkpoint (step, or epoch for Alg. 2) to read; default: '
                 'the newest.')
  p.add_argument('--top', type=int, default=32, help='How many suspects to print and '
                 'draw (default 32).')
  args = p.parse_args(argv)
  if args.top < 1:
    p.error(f'--top={args.top}: must be at least 1')
  return args


def output_paths(workdir: str, checkpoint) -> tuple[str, str]:
  """(csv, png) paths: the run's files, or per-checkpoint ones."""
  csv_name, png_name = label_issues.CSV_FILE, grid.PNG_FILE
  if checkpoint is not None:
    suffix = f'_step{checkpoint}'
    csv_name = csv_name.replace('.csv', suffix + '.csv')
    png_name = png_name.replace('.png', suffix + '.png')
  return os.path.join(workdir, csv_name), os.path.join(workdir, png_name)


def inspect_run(workdir: str, checkpoint=None, top: int = 32) -> list[str]:
  """Writes the table and the grid of a run; returns the lines to print."""
  config = runs.read_config(workdir)
  record, step = runs.read_record(workdir, checkpoint)
  splits = runs.load_training_split(config, workdir)
  train = splits.train
  runs.check_record(record, len(train), workdir)
  table = label_issues.rank_label_issues(
      {k: v[:len(train)] for k, v in record.items()}, train.labels, train.true_labels,
      method=str(config.meta.method))
  csv_path, png_path = output_paths(workdir, checkpoint)
  label_issues.write_csv(csv_path, table)
  images = train.get_batch(table.index[:top])['image']
  name = grid.class_namer(str(config.data.name))  # class names where known
  grid.plot_label_issues(png_path, images, table, top, data_name=str(config.data.name),
                         title=f'{config.data.name}, checkpoint {step}: the {top} '
                         'training labels most likely wrong, given → predicted label '
                         '(red: the given label differs from the true one)')
  lines = [f'famus_jax: checkpoint {step} of {workdir}: {len(table)} training examples '
           f'ranked, {int(table.flagged.sum())} flagged (score > 0.5)']
  lines += label_issues.top_lines(table, top, name)
  lines.append('famus_jax: ' + label_issues.describe(label_issues.summary_entry(table)))
  lines.append(f'famus_jax: table in {csv_path}, top {min(top, len(table))} in {png_path}')
  return lines


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    lines = inspect_run(args.workdir, args.checkpoint, args.top)
  except (runs.RunError, WriteError) as e:  # WriteError: e.g. a read-only workdir
    print(f'famus_jax: error: {e}', file=sys.stderr)
    sys.exit(1)
  for line in lines:
    print(line)


if __name__ == '__main__':
  main()

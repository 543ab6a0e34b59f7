"""Small Mixers against the ResNet baseline, trained from scratch, over several seeds.

  python studies/from_scratch.py                                  # digits: 12 runs, 7 to 12 min
  python studies/from_scratch.py --config=configs/cifar10_scratch.py:4 --config.data_dir=DIR \\
      --mixers=8x256,8x512 --resnets=2x32,2x64 --workdir=runs/from_scratch_cifar10

Every model is trained with the recipe's settings (optimiser, schedule, steps, augmentation)
once per seed in --seeds (the seed sets the initialisation, the example order and the
augmentation draws), so that a difference between models can be told from the spread between
seeds: on digits' 360 test images one image is 0.28%. --mixers are BLOCKSxWIDTH Mixers with the
recipe's patch size and the recipe's ratios D_S/C and D_C/C; --resnets are UNITSxWIDTH
pre-activation ResNets (studies/resnet.py: UNITS residual units in each of 3 stages, WIDTH
channels doubling per stage). Runs land in <workdir>/<model>_seed<k>, and a rerun reuses
finished runs of the same settings; from_scratch.png (accuracy against parameters, mean and
standard deviation over seeds, each seed a dot) and from_scratch.json (parameters, per-seed
accuracies, mean, std) go to <workdir>, showing the models of this command (it names those a
previous one also showed).
"""
import copy
import json
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from mixer_jax import host, trainer  # noqa: E402
from mixer_jax.errors import UserError  # noqa: E402
from studies import resnet, study  # noqa: E402


def define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
  study.define_recipe(values, argv)
  flags.DEFINE_string('workdir', 'runs/from_scratch', 'Runs and outputs go here.',
                      flag_values=values)
  flags.DEFINE_list('mixers', ['2x64', '4x128'], 'Mixers as BLOCKSxWIDTH.', flag_values=values)
  flags.DEFINE_list('resnets', ['1x8', '1x16'], 'ResNets as UNITSxWIDTH (3 stages).',
                    flag_values=values)
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'One run per model and seed.', flag_values=values)


def depth_and_width(spec: str, flag: str) -> tuple[int, int]:
  try:
    depth, width = (int(n) for n in spec.split('x'))
  except ValueError:
    depth = width = 0
  if depth < 1 or width < 1:
    shape = 'BLOCKSxWIDTH' if flag == 'mixers' else 'UNITSxWIDTH'
    raise UserError(f'--{flag} takes {shape} entries such as 4x128, not {spec!r}.')
  return depth, width


def model_configs(recipe, values) -> dict[str, tuple[ml_collections.ConfigDict, object]]:
  """{name: (config without its seed, build)} for every model asked for."""
  out = {}
  mixer = trainer.build_model(recipe, 1)  # the recipe's Mixer: patch size and MLP ratios
  for spec in values.mixers:
    blocks, width = depth_and_width(spec, 'mixers')
    config = copy.deepcopy(recipe)
    config.variant = ''
    config.model.update(num_blocks=blocks, patch_size=mixer.patch_size, hidden_dim=width,
                        tokens_mlp_dim=max(1, round(mixer.tokens_mlp_dim * width / mixer.hidden_dim)),
                        channels_mlp_dim=max(1, round(mixer.channels_mlp_dim * width / mixer.hidden_dim)))
    out[f'mixer_{spec}'] = (config, trainer.build_model)
  for spec in values.resnets:
    units, width = depth_and_width(spec, 'resnets')
    config = copy.deepcopy(recipe)
    config.resnet = ml_collections.ConfigDict(dict(
        stage_sizes=[units] * 3, width=width, imagenet_stem=recipe.image_size >= 64))
    out[f'resnet_{spec}'] = (config, resnet.build)
  return out


def parameter_count(config, build) -> int:
  model = build(config, trainer.data_source(config).num_classes(config))
  images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)['params']
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


def plot(rows: list[dict], recipe):
  figure = study.new_figure(7, 4.2)
  ax = figure.add_subplot()
  for family, colour, marker in (('Mixer', 'C0', 'o'), ('ResNet', 'C1', 's')):
    mine = [r for r in rows if r['family'] == family]
    for r in mine:
      ax.scatter([r['params']] * len(r['accuracies']), r['accuracies'], color=colour, s=10,
                 alpha=0.4)
      ax.annotate(r['model'].split('_')[1], (r['params'], r['mean']), fontsize='small',
                  xytext=(5, 5), textcoords='offset points')
    ax.errorbar([r['params'] for r in mine], [r['mean'] for r in mine],
                [r['std'] for r in mine], color=colour, marker=marker, capsize=3, label=family)
  ax.set(xscale='log', xlabel='parameters', ylabel=f'{recipe.eval_split} accuracy',
         title=f'From scratch on {recipe.dataset}, {recipe.total_steps} steps, '
               f'{len(rows[0]["accuracies"])} seeds (mean and std)')
  ax.margins(x=0.15)  # room for the labels of the outermost models
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small')
  return figure


def models_left_out(workdir: str, rows: list[dict]) -> list[str]:
  """The models of the from_scratch.json already in `workdir` that `rows` leave out."""
  try:
    with open(os.path.join(workdir, 'from_scratch.json')) as f:
      before = {r['model'] for r in json.load(f)['results']}
  except (OSError, ValueError, KeyError, TypeError):  # none yet, or not ours to read
    return []
  return sorted(before - {r['model'] for r in rows})


def main(argv: Sequence[str]) -> None:
  values, _ = study.parse_flags(argv, __doc__, lambda v: define_flags(v, argv))
  seeds = study.int_list(values.seeds, 'seeds', minimum=0, unique=True)
  recipe = study.recipe(values)
  models = model_configs(recipe, values)
  if not models:
    raise UserError('No models to train: give --mixers=BLOCKSxWIDTH,... or '
                    '--resnets=UNITSxWIDTH,... (or both).')
  runs = {}  # (model, seed): (config, workdir), all checked before the first trains
  for name, (config, _) in models.items():
    for seed in seeds:
      run = copy.deepcopy(config)
      run.seed = seed
      runs[name, seed] = (run, os.path.join(values.workdir, f'{name}_seed{seed}'))
  study.refuse_changed_runs(list(runs.values()))
  rows = []
  for name, (config, build) in models.items():
    accuracies = [study.train(*runs[name, seed], build, f'{name}, seed {seed}')[
        f'{recipe.eval_split}_accuracy'] for seed in seeds]
    rows.append({'model': name, 'family': 'Mixer' if name.startswith('mixer') else 'ResNet',
                 'params': parameter_count(config, build), 'mean': float(np.mean(accuracies)),
                 'std': float(np.std(accuracies, ddof=1)) if len(seeds) > 1 else 0.0,
                 'accuracies': accuracies})
  text = study.format_table(rows, ['model', 'params', 'mean', 'std', 'accuracies'])
  table = {'dataset': recipe.dataset, 'steps': recipe.total_steps, 'seeds': seeds,
           'eval_split': recipe.eval_split, 'results': rows}
  left_out = models_left_out(values.workdir, rows)
  study.write_outputs(values.workdir, 'from_scratch', plot(rows, recipe), table, text)
  if left_out:
    print(f'The previous from_scratch.png and .json also showed {", ".join(left_out)}; their '
          f'runs are kept in {values.workdir}: name them in --mixers or --resnets to show them '
          f'again.', flush=True)


if __name__ == '__main__':
  host.keep_freed_memory_on_cpu()  # before JAX starts, as train.py: faster CPU steps
  study.run(main)

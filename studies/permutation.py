"""Input-permutation study (paper section 3.4, Figure 4): does a model need pixels in their places?

  python studies/permutation.py                                   # digits, about 4 min on 2 CPU cores
  python studies/permutation.py --shuffle=test_only               # the experiment people mistake it for
  python studies/permutation.py --config=configs/cifar10_scratch.py:4 --config.data_dir=DIR \\
      --resnet_stage_sizes=2,2,2,2 --resnet_width=64 --workdir=runs/permutation_cifar10

`--shuffle=train_and_test` (the paper's experiment): a Mixer and a pre-activation ResNet
(studies/resnet.py) are trained with the recipe's settings on each version of the data, the
pixel permutation fixed by --seed and applied as the last preprocessing step of every image in
training and evaluation alike (mixer_jax/permutations.py): `original`, `patch_pixel` (the
Mixer's patches in a shuffled order and the pixels inside every patch permuted the same way) and
`global` (all pixel positions). It plots the test-accuracy curves under a row of example images
and tabulates final accuracies and drops relative to `original`. It also checks, without any
training, why the Mixer's `original` and `patch_pixel` runs are the same experiment: the trained
`original` Mixer with its stem and token-mixing weights permuted (permutations.permute_mixer_params)
gives on `patch_pixel` images the logits it gives on the originals.

`--shuffle=test_only` trains on the original data only and evaluates on permuted test images:
what a trained model does with inputs it never saw shuffled (a Mixer breaks, like the ResNet),
next to the Mixer with its weights permuted. Runs land in <workdir>/<model>_<permutation>, and a
rerun reuses finished runs of the same settings; permutation.png and permutation.json go to
<workdir> (permutation_test_only.png and .json with --shuffle=test_only).
"""
import copy
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from absl import flags  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.training import train_state  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from mixer_jax import checkpoints, host, permutations, steps, trainer  # noqa: E402
from studies import curves, resnet, study  # noqa: E402

BUILDERS = {'mixer': trainer.build_model, 'resnet': resnet.build}
LABELS = {'mixer': 'Mixer', 'resnet': 'ResNet'}
SHUFFLES = ('train_and_test', 'test_only')


def define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
  study.define_recipe(values, argv)
  flags.DEFINE_string('workdir', 'runs/permutation', 'Runs and outputs go here.',
                      flag_values=values)
  flags.DEFINE_string('models', 'mixer,resnet', f'Comma-separated: {", ".join(BUILDERS)}.',
                      flag_values=values)
  flags.DEFINE_string('permutations', ','.join(permutations.KINDS),
                      f'Comma-separated: {", ".join(permutations.KINDS)}.', flag_values=values)
  flags.DEFINE_string('shuffle', 'train_and_test', 'train_and_test: the paper\'s experiment; '
                      'test_only: train on the originals, evaluate on permuted test images.',
                      flag_values=values)
  flags.DEFINE_integer('seed', 0, 'Seed of the pixel permutations.', lower_bound=0,
                       flag_values=values)
  flags.DEFINE_list('resnet_stage_sizes', ['1', '1', '1'], 'Residual units per ResNet stage.',
                    flag_values=values)
  flags.DEFINE_integer('resnet_width', 16, 'Channels of the first ResNet stage (doubling after).',
                       lower_bound=1, flag_values=values)
  flags.DEFINE_integer('curve_points', 8, 'Evaluations per run (eval_every = total_steps / this).',
                       lower_bound=1, flag_values=values)


def run_config(recipe, values, kind: str, patch_size: int) -> ml_collections.ConfigDict:
  """The recipe with the permutation, the ResNet's sizes and the evaluation interval set."""
  config = copy.deepcopy(recipe)
  config.input_permutation = ml_collections.ConfigDict(
      dict(kind=kind, patch_size=patch_size, seed=values.seed))
  config.resnet = ml_collections.ConfigDict(dict(
      stage_sizes=study.int_list(values.resnet_stage_sizes, 'resnet_stage_sizes'),
      width=values.resnet_width,
      imagenet_stem=config.image_size >= 64))
  config.eval_every = max(config.total_steps // values.curve_points, 1)
  return config


def replicated_state(model, params, mesh) -> train_state.TrainState:
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.identity())
  return jax.device_put(state, NamedSharding(mesh, P()))


def weight_permutation_check(config, params) -> dict:
  """The trained Mixer `params` on the original evaluation images against, on the same images
  permuted patch_pixel-wise, its permuted weights (the same logits) and its own (test-time shuffle).

  `config` is the run's config with the original data; its permutation block gives the seed.
  """
  spec = config.input_permutation
  patches, pixels = permutations.patch_pixel_orders(config.image_size, spec.patch_size, spec.seed)
  order = permutations.pixel_order('patch_pixel', config.image_size, spec.patch_size, spec.seed)
  permuted_params = permutations.permute_mixer_params(params, patches, pixels)
  from mixer_jax import input_pipeline  # TensorFlow: seconds a mistyped flag need not wait for
  model = trainer.build_model(config, input_pipeline.num_classes(config))
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))
  logits, absorbed, unabsorbed, labels = [], [], [], []
  for batch in input_pipeline.create_eval_dataset(config, config.eval_split, 0, 1).as_numpy_iterator():
    keep = batch['mask'] > 0
    shuffled = permutations.permute(batch['image'], order)
    logits.append(np.asarray(apply(params, batch['image']))[keep])
    absorbed.append(np.asarray(apply(permuted_params, shuffled))[keep])
    unabsorbed.append(np.asarray(apply(params, shuffled))[keep])
    labels.append(batch['label'][keep])
  logits, absorbed, unabsorbed, labels = map(np.concatenate, (logits, absorbed, unabsorbed, labels))
  accuracy = lambda l: float(np.mean(l.argmax(-1) == labels))
  return {'images': len(labels),
          'max_abs_logit': float(np.abs(logits).max()),
          'max_abs_logit_difference': float(np.abs(absorbed - logits).max()),
          'same_predictions': bool(np.all(absorbed.argmax(-1) == logits.argmax(-1))),
          'accuracy_original': accuracy(logits),
          'accuracy_patch_pixel_weights_permuted': accuracy(absorbed),
          'accuracy_patch_pixel_weights_unchanged': accuracy(unabsorbed)}


def run_dir(values, model: str, kind: str) -> str:
  return os.path.join(values.workdir, f'{model}_{kind}')


def train(values, recipe, model: str, kind: str, patch_size: int) -> tuple[dict, dict]:
  """(final results, metrics) of one run, trained now or found finished in its workdir."""
  workdir = run_dir(values, model, kind)
  results = study.train(run_config(recipe, values, kind, patch_size), workdir, BUILDERS[model],
                        f'{LABELS[model]} on {kind} data')
  return results, curves.read_metrics(workdir)


def add_relative_drops(rows: list[dict], data: str) -> list[dict]:
  """Each row's accuracy drop relative to its model's accuracy on `original` data."""
  reference = {row['model']: row['accuracy'] for row in rows if row[data] == 'original'}
  for row in rows:
    base = reference.get(row['model'].split(',')[0])
    row['relative_drop'] = None if base is None else (base - row['accuracy']) / base
  return rows


def plot_examples(figure, grid, configs: dict[str, ml_collections.ConfigDict]) -> None:
  """One evaluation image per permutation, on the first row of `grid`."""
  from mixer_jax import input_pipeline
  for i, (kind, config) in enumerate(configs.items()):
    ax = figure.add_subplot(grid[0, i])
    batch = next(input_pipeline.create_eval_dataset(config, config.eval_split, 0, 1)
                 .as_numpy_iterator())
    ax.imshow((batch['image'][0] + 1) / 2, interpolation='nearest')
    ax.set(title=kind, xticks=[], yticks=[])


def train_and_test(values, recipe, models, kinds, patch_size) -> tuple:
  """The paper's experiment: one run per model and permutation."""
  rows, runs, check = [], {}, None
  for model in models:
    for kind in kinds:
      results, metrics = train(values, recipe, model, kind, patch_size)
      runs[model, kind] = metrics[recipe.eval_split]
      rows.append({'model': model, 'permutation': kind,
                   'accuracy': results[f'{recipe.eval_split}_accuracy']})
    if model == 'mixer' and 'original' in kinds:
      params = checkpoints.load_params(run_dir(values, 'mixer', 'original'))
      check = weight_permutation_check(run_config(recipe, values, 'original', patch_size), params)

  figure = study.new_figure(8, 6)
  grid = figure.add_gridspec(2, len(kinds), height_ratios=[1, 2.4])
  plot_examples(figure, grid, {k: run_config(recipe, values, k, patch_size) for k in kinds})
  ax = figure.add_subplot(grid[1, :])
  for (model, kind), records in runs.items():
    ax.plot(*curves.series(records, 'accuracy'), color=f'C{kinds.index(kind)}', marker='o',
            markersize=3, linestyle='-' if model == 'mixer' else '--',
            label=f'{LABELS[model]}, {kind}')
  ax.set(xlabel='training step', ylabel=f'{recipe.eval_split} accuracy',
         title='Trained and evaluated on permuted data')
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small')
  rows = add_relative_drops(rows, 'permutation')
  text = study.format_table(rows, ['model', 'permutation', 'accuracy', 'relative_drop'])
  return figure, rows, check, text


def test_only(values, recipe, models, kinds, patch_size) -> tuple:
  """Models trained on the originals, evaluated on permuted test images."""
  rows, check = [], None
  mesh = steps.create_mesh()
  eval_step = steps.make_eval_step(mesh)  # one compilation per model, reused for every test set
  num_classes = trainer.data_source(recipe).num_classes(recipe)
  for model in models:
    train(values, recipe, model, 'original', patch_size)
    params = checkpoints.load_params(run_dir(values, model, 'original'),
                                     mixer=model == 'mixer')
    net = BUILDERS[model](run_config(recipe, values, 'original', patch_size), num_classes)
    state = replicated_state(net, params, mesh)
    for kind in kinds:
      config = run_config(recipe, values, kind, patch_size)
      rows.append({'model': model, 'test_images': kind,
                   'accuracy': trainer.evaluate(eval_step, state, config, mesh)['accuracy']})
    if model == 'mixer' and 'patch_pixel' in kinds:
      check = weight_permutation_check(run_config(recipe, values, 'original', patch_size), params)
      config = run_config(recipe, values, 'patch_pixel', patch_size)
      permuted = permutations.permute_mixer_params(params, *permutations.patch_pixel_orders(
          config.image_size, patch_size, values.seed))
      rows.append({'model': 'mixer, weights permuted', 'test_images': 'patch_pixel',
                   'accuracy': trainer.evaluate(eval_step, replicated_state(net, permuted, mesh),
                                                config, mesh)['accuracy']})

  figure = study.new_figure(8, 4.2)
  ax = figure.add_subplot()
  names = list(dict.fromkeys(row['model'] for row in rows))
  width = 0.8 / len(names)
  for i, name in enumerate(names):
    mine = [row for row in rows if row['model'] == name]
    bars = ax.bar([kinds.index(row['test_images']) + (i - (len(names) - 1) / 2) * width
                   for row in mine], [row['accuracy'] for row in mine], width, label=name,
                  color=f'C{i}')
    ax.bar_label(bars, fmt='%.3f', fontsize='small')
  ax.set(xticks=range(len(kinds)), xticklabels=kinds, ylim=(0, 1), ylabel='test accuracy',
         title='Trained on the originals, shuffled only at test time')
  ax.legend(fontsize='small')
  ax.grid(alpha=0.3, axis='y')
  rows = add_relative_drops(rows, 'test_images')
  text = study.format_table(rows, ['model', 'test_images', 'accuracy', 'relative_drop'])
  return figure, rows, check, text


def main(argv: Sequence[str]) -> None:
  values, _ = study.parse_flags(argv, __doc__, lambda v: define_flags(v, argv))
  models = study.split_list(values.models, list(BUILDERS), 'model')
  kinds = study.split_list(values.permutations, permutations.KINDS, 'permutation')
  [shuffle] = study.split_list(values.shuffle, SHUFFLES, 'shuffle')
  recipe = study.recipe(values)
  patch_size = trainer.build_model(recipe, 1).patch_size  # patch_pixel uses the Mixer's patches
  trained = kinds if shuffle == 'train_and_test' else ['original']
  study.refuse_changed_runs([(run_config(recipe, values, kind, patch_size),
                              run_dir(values, model, kind)) for model in models for kind in trained])
  figure, rows, check, text = (train_and_test if shuffle == 'train_and_test' else test_only)(
      values, recipe, models, kinds, patch_size)
  if check:
    text += (f"\nWeight permutation (no training): the trained original Mixer, stem and "
             f"token-mixing weights permuted, on {check['images']} patch_pixel test images: "
             f"max |logit difference| {check['max_abs_logit_difference']:.2g} (logits up to "
             f"{check['max_abs_logit']:.3g}), same predictions: {check['same_predictions']}; "
             f"unpermuted weights on them: accuracy {check['accuracy_patch_pixel_weights_unchanged']:.3f} "
             f"against {check['accuracy_original']:.3f} on the originals.")
  table = {'shuffle': shuffle, 'permutation_seed': values.seed, 'patch_size': patch_size,
           'steps': recipe.total_steps, 'dataset': recipe.dataset, 'results': rows,
           'weight_permutation_check': check}
  name = 'permutation' if shuffle == 'train_and_test' else 'permutation_test_only'
  study.write_outputs(values.workdir, name, figure, table, text)


if __name__ == '__main__':
  host.keep_freed_memory_on_cpu()  # before JAX starts, as train.py: faster CPU steps
  study.run(main)

"""The `smoke` option of every recipe: the same code path, shrunk to run in seconds (tests)."""


def shrink(config):
  """A 2-block Mixer at 32x32 from random weights, batches of 8, 3 steps, float32; data and
  optimiser unchanged."""
  config.image_size = 32
  config.model.update(num_blocks=2, hidden_dim=32, tokens_mlp_dim=8, channels_mlp_dim=32)
  config.dtype = 'float32'
  config.init_from = ''  # no pre-trained weights are this small
  config.shuffle_buffer = 16
  config.batch_size = config.eval_batch_size = 8
  config.total_steps, config.warmup_steps = 3, 1
  config.log_every = config.eval_every = config.checkpoint_every = 3
  return config


def apply(config, options: list[str], usage: str):
  """The recipe's config with its options applied: `smoke` is the only one."""
  unknown = [o for o in options if o != 'smoke']
  if unknown:
    raise ValueError(f'unknown option {",".join(unknown)!r}: the argument is {usage}.')
  return shrink(config) if options else config

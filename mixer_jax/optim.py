"""Learning-rate schedules and optimisers of the paper's recipes, from a config."""
import jax
import optax

from mixer_jax.errors import UserError


def create_learning_rate_fn(config) -> optax.Schedule:
  """Linear warmup from 0, then cosine or linear decay to 0 at `total_steps`."""
  warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  decay_steps = max(config.total_steps - config.warmup_steps, 1)
  if config.lr_decay == 'cosine':
    decay = optax.cosine_decay_schedule(config.learning_rate, decay_steps)
  elif config.lr_decay == 'linear':
    decay = optax.linear_schedule(config.learning_rate, 0.0, decay_steps)
  else:
    raise UserError(f"Unknown lr_decay {config.lr_decay!r}: use 'cosine' or 'linear'.")
  return optax.join_schedules([warmup, decay], [config.warmup_steps])


def create_optimizer(config, learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """Global-norm clipping followed by Adam(W) or SGD with momentum."""
  if config.optimizer == 'adam':
    # Decay the weight matrices only, not biases or LayerNorm scales.
    kernels_only = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    opt = optax.adamw(learning_rate_fn, b1=0.9, b2=0.999, weight_decay=config.weight_decay,
                      mask=kernels_only)
  elif config.optimizer == 'sgd':
    opt = optax.chain(optax.add_decayed_weights(config.weight_decay),
                      optax.sgd(learning_rate_fn, momentum=0.9))
  else:
    raise UserError(f"Unknown optimizer {config.optimizer!r}: use 'adam' or 'sgd'.")
  return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)

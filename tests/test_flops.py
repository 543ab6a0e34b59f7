"""The analytic FLOP counts against XLA's own count of the compiled forward pass."""
import jax
import jax.numpy as jnp
import pytest

from mixer_jax import flops, models


@pytest.mark.parametrize('variant', ['S/32', 'B/16'])
def test_forward_flops_match_xla_cost_analysis(variant):
  model = models.create_model(variant, num_classes=1000)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)['params']
  compiled = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, images).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # XLA also counts LayerNorm, GELU and the residual adds: about 1% on top of the matmuls.
  assert 1.0 <= cost['flops'] / flops.forward_flops(model, 224) < 1.02


def test_flops_of_b16_are_the_published_figure():
  # timm lists 12.62 GMACs for B/16 at 224: 25.2 GFLOPs at 2 FLOPs per multiply-add.
  model = models.create_model('B/16', num_classes=1000)
  assert flops.forward_flops(model, 224) / 1e9 == pytest.approx(25.2, abs=0.05)
  assert flops.train_step_flops(model, 224) == 3 * flops.forward_flops(model, 224)

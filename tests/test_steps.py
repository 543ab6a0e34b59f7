"""The training step's pieces that are not covered end to end: mixup."""
import jax
import jax.numpy as jnp
import numpy as np

from mixer_jax import steps


def test_mixup_mixes_labels_with_the_weights_of_the_images_and_keeps_sums_at_one():
  images = jax.random.normal(jax.random.key(0), (6, 4, 4, 3))
  labels = jax.nn.one_hot(jnp.array([0, 1, 2, 3, 4, 0]), 5)
  for seed in range(5):
    mixed_images, mixed_labels = steps.mixup(jax.random.key(seed), images, labels, 0.5)
    np.testing.assert_allclose(mixed_labels.sum(-1), 1.0, rtol=1e-6)
    lam = float(mixed_labels[1, 1])  # example 1 (class 1) mixed with example 0 (class 0)
    assert 0.0 <= lam <= 1.0
    np.testing.assert_allclose(mixed_labels[1, 0], 1 - lam, rtol=1e-6)
    np.testing.assert_allclose(mixed_images, lam * images + (1 - lam) * jnp.roll(images, 1, 0),
                               rtol=1e-5, atol=1e-6)
  lams = [float(steps.mixup(jax.random.key(s), images, labels, 0.5)[1][1, 1]) for s in range(50)]
  assert np.std(lams) > 0.2  # Beta(0.5, 0.5) is spread towards 0 and 1


def test_prefetch_to_mesh_yields_every_batch_in_order_as_global_arrays():
  mesh = steps.create_mesh()
  batches = [{'image': np.full((4, 2), i, np.float32)} for i in range(5)]
  out = list(steps.prefetch_to_mesh(iter(batches), mesh, size=2))
  assert len(out) == 5
  for i, batch in enumerate(out):
    assert isinstance(batch['image'], jax.Array)
    np.testing.assert_array_equal(batch['image'], batches[i]['image'])

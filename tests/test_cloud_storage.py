"""gs:// workdirs, weights and image folders, against a Cloud Storage emulator on 127.0.0.1."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import jax
import numpy as np

import fake_gcs
from mixer_jax import checkpoints, models, trainer
from test_input_pipeline import folder_config, make_image_folder
from training import ROOT, restore_params

BUCKET = 'mixer-test'
OVERRIDES = {'total_steps': 30, 'warmup_steps': 5, 'checkpoint_every': 10, 'keep_checkpoints': 2,
             'log_every': 5, 'eval_every': 1000, 'batch_size': 4, 'eval_batch_size': 4,
             'model.num_blocks': 1, 'model.hidden_dim': 32}  # a small model compiles fast


def api(env, path, data=None, headers=None):
  """A request to the emulator's JSON API (plain HTTP on 127.0.0.1)."""
  request = urllib.request.Request(f'{env["STORAGE_EMULATOR_HOST"]}{path}', data, headers or {})
  with urllib.request.urlopen(request, timeout=30) as response:
    return response.read()


def upload(env, local: pathlib.Path, name: str):
  api(env, f'/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={urllib.parse.quote(name)}',
      local.read_bytes(), {'Content-Type': 'application/octet-stream'})


def objects(env, prefix: str) -> list[str]:
  listing = json.loads(api(env, f'/storage/v1/b/{BUCKET}/o?prefix={urllib.parse.quote(prefix)}'))
  return [item['name'] for item in listing.get('items', [])]


def download(env, prefix: str, to: pathlib.Path):
  for name in objects(env, prefix):
    if not name.endswith('/'):
      target = to / name
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(api(env, f'/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe="")}'
                                  '?alt=media'))


def test_train_py_on_gs_trains_is_killed_and_resumes_to_the_same_parameters(tmp_path):
  data = make_image_folder(tmp_path / 'data')
  (data / 'train' / 'cat' / 'more').mkdir()  # a sub-folder's images belong to the class
  (data / 'train' / 'cat' / '0.jpg').rename(data / 'train' / 'cat' / 'more' / '0.jpg')
  (data / 'test' / 'dog' / '.thumbnails').mkdir()  # hidden: not the class's images again
  shutil.copy(data / 'test' / 'dog' / '0.jpg', data / 'test' / 'dog' / '.thumbnails')
  config = folder_config(data)
  for field, value in OVERRIDES.items():
    *parent, name = field.split('.')
    (config[parent[0]] if parent else config)[name] = value
  sizes = {k: config.model[k] for k in
           ('num_blocks', 'patch_size', 'hidden_dim', 'tokens_mlp_dim', 'channels_mlp_dim')}
  model = models.MlpMixer(num_classes=3, **sizes)
  init = model.init(jax.random.key(7), np.zeros((1, 16, 16, 3), np.float32))['params']
  init = jax.tree.map(lambda x: x + 0.01, init)  # a head and biases unlike a fresh model's
  checkpoints.save_npz(init, tmp_path / 'init.npz')
  config.init_from = str(tmp_path / 'init.npz')

  with fake_gcs.emulator(BUCKET) as env:
    for path in data.rglob('*'):
      if path.is_file():
        upload(env, path, f'data/{path.relative_to(data)}')
    upload(env, tmp_path / 'init.npz', 'weights/init.npz')
    flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()] + [
        '--config.dataset=folder', f'--config.data_dir=gs://{BUCKET}/data',
        f'--config.init_from=gs://{BUCKET}/weights/init.npz', f'--workdir=gs://{BUCKET}/run']
    command = [sys.executable, str(ROOT / 'train.py'), *flags]
    process_env = {**os.environ, **env, 'JAX_PLATFORMS': 'cpu'}
    killed = subprocess.Popen(command, env=process_env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
      deadline = time.time() + 240
      while not any(re.fullmatch(r'run/checkpoints/\d+/commit_success.txt', name)
                    for name in objects(env, 'run/checkpoints/')):
        assert killed.poll() is None, killed.communicate()[0]
        assert time.time() < deadline, 'no checkpoint appeared'
        time.sleep(0.2)
      killed.send_signal(signal.SIGKILL)
      killed.wait()
    finally:
      killed.kill()
    assert not objects(env, 'run/results.json')
    assert objects(env, 'run/lock.json')  # left behind by the killed run

    resumed = subprocess.run(command, env=process_env, cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out
    assert 'Taking over the lock of a run that is gone' in out
    resumed_at = int(re.search(r'Resumed from gs://\S+ at step (\d+)', out).group(1))
    assert 10 <= resumed_at < 30
    names = objects(env, 'run/')
    assert {'run/config.json', 'run/metrics.jsonl', 'run/results.json'} <= set(names)
    assert any('events.out.tfevents' in name for name in names)
    assert 'run/lock.json' not in names  # released at the end
    steps = {int(m.group(1)) for m in map(re.compile(r'run/checkpoints/(\d+)/').match, names) if m}
    assert steps == {20, 30}  # keep_checkpoints=2: orbax deleted step 10 on gs://
    download(env, 'run/', tmp_path / 'gs')

    def tool(script, *args):  # one of the project's commands, on the emulator
      return subprocess.run([sys.executable, script, *args], env=process_env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)

    # The curves of a run on a pod are read where it wrote them.
    def curves(*runs):
      return tool('studies/curves.py', *[f'gs://{BUCKET}/{r}' for r in runs],
                  f'--out={tmp_path / "curves"}')
    typo = curves('run', 'typo')
    assert typo.returncode == 1 and typo.stderr.strip().splitlines()[-1] == (
        f'error: gs://{BUCKET}/typo does not exist: give the workdirs of train.py runs.')
    found = curves('run')
    assert found.returncode == 0, found.stderr[-3000:]

    # predict.py on a gs:// folder, which no shell glob reaches into, with the run's weights and
    # class names there too: what it prints of the local copies.
    def predict(checkpoint, folder):
      done = tool('predict.py', f'--checkpoint={checkpoint}', '--top_k=2', folder)
      assert done.returncode == 0, done.stderr[-3000:]
      return done.stdout.replace(folder, '<folder>')
    on_gs = predict(f'gs://{BUCKET}/run', f'gs://{BUCKET}/data/test')
    assert on_gs == predict(str(tmp_path / 'gs' / 'run'), str(data / 'test'))
    images = sorted(p.relative_to(data / 'test') for p in (data / 'test').rglob('*.*')
                    if '.thumbnails' not in p.parts)
    assert re.findall(r'<folder>/(\S+)', on_gs) == [str(p) for p in images]
    assert set(re.findall(r'%\s+(\S+)', on_gs)) <= {'cat', 'dog', 'fox'}, on_gs

  whole = trainer.train_and_evaluate(config, tmp_path / 'whole')  # local files, never stopped
  assert json.loads((tmp_path / 'gs' / 'run' / 'results.json').read_text()) == whole
  gs_log, local_log = [[(r['step'], r['split']) for r in map(json.loads, open(run / 'metrics.jsonl'))]
                       for run in (tmp_path / 'gs' / 'run', tmp_path / 'whole')]
  assert gs_log == local_log  # the steps repeated after the resume are logged once
  last_train = [r for r in map(json.loads, open(tmp_path / 'gs' / 'run' / 'metrics.jsonl'))
                if r['split'] == 'train'][-1]
  [row] = json.loads((tmp_path / 'curves' / 'curves.json').read_text())['runs']
  assert (row['step'], row['total_steps'], row['train_loss']) == (30, 30, last_train['loss'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               restore_params(tmp_path / 'gs' / 'run', 30), restore_params(tmp_path / 'whole', 30))

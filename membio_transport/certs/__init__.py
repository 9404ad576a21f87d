"""Server certificates for the zero-config ``twistd membio-https`` plugin.

``twistd -n membio-https`` has to serve HTTPS on a fresh machine where nobody has a
certificate at hand, yet whatever it serves must pass strict verifiers (Python's ``ssl``
with ``VERIFY_X509_STRICT``, ``openssl verify -x509_strict``, curl, browsers) once the user
has trusted it.  This module makes such certificates, keeps them in a private state
directory, reuses and renews them across restarts, and validates certificates the user
brings along with ``--cert``/``--key``.

Two ways of generating are offered:

``local-ca`` (the default)
    A ten-year local root (CA:TRUE, pathlen:0) signs short-lived leaves.  The user trusts
    the root once; leaves rotate every few weeks without any new trust step.  This is the
    default because a trusted root is what every trust store expects: Firefox will not
    import a CA:FALSE certificate as an authority, and Chromium rejects a CA:FALSE
    certificate trusted as an anchor (NSS trust "C") with a non-skippable error.
``self-signed``
    A single CA:FALSE certificate that is its own trust anchor.  OpenSSL (so Python's
    ``ssl`` and curl) accepts it under strict verification, but every renewal needs the
    user to trust the new certificate again, and NSS needs the "CP" trust flags for it.

The local root's private key can sign certificates for any name: anyone who can read the
state directory could impersonate any site to a user who trusted the root, which is why
the directory is kept at mode 0700 and key files at 0600.

What this layer is for: every certificate the servers use and every rule about one --
generating, storing, renewing, loading the user's files, host names -- behind this face,
which the serving layer, ``acme``, ``observe``, the tests and the benchmarks import.

What it may import: ``cryptography``, pyOpenSSL and the standard library.  No other part of
this package: it is a bottom layer, beside ``tls``.

The work is done in focused modules:

``_x509``
    pure X.509 with ``cryptography``: keys, local roots, leaves, and reading them back;
``_hostnames``
    the names a certificate covers, checked and normalized (IDNA 2008);
``_store``
    the private state directory (permissions, atomic writes, locking) and the decision
    to reuse or renew what it holds, behind ``ensure_certificate``; its directory and
    atomic-write helpers serve the ACME state too (``membio_transport.acme``);
``_usercerts``
    the user's own ``--cert``/``--key`` files, validated with one-line errors;
``_passwords``
    the one rule for encrypted keys: where their password comes from, the error when it
    is missing, decrypting them for OpenSSL;
``_servercert`` and ``_errors``
    the result (``ServerCertificate``) and the failure (``CertificateError``) they share.
"""

from __future__ import annotations

from ._errors import CertificateError, os_reason
from ._hostnames import default_hostnames, is_ip_address, normalize_name
from ._passwords import (
    KEY_PASSWORD_ENV,
    check_key_passwords,
    key_for_openssl,
    key_is_encrypted,
    read_key_password,
)
from ._servercert import ServerCertificate
from ._store import (
    CERT_FILE_MODE,
    DEFAULT_MODE,
    KEY_FILE_MODE,
    Mode,
    default_cert_dir,
    ensure_certificate,
    prepare_state_dir,
    renewal_time,
    write_atomically,
)
from ._usercerts import ServerKey, load_certificate, read_private_key
from ._x509 import (
    LOCAL_CA_LEAF_LIFETIME,
    ROOT_LIFETIME,
    KeyType,
    generate_leaf,
    generate_private_key,
    generate_root_ca,
    pem_cert,
    pem_key,
)

__all__ = [
    "CERT_FILE_MODE",
    "DEFAULT_MODE",
    "KEY_FILE_MODE",
    "KEY_PASSWORD_ENV",
    "LOCAL_CA_LEAF_LIFETIME",
    "ROOT_LIFETIME",
    "CertificateError",
    "KeyType",
    "Mode",
    "ServerCertificate",
    "ServerKey",
    "check_key_passwords",
    "default_cert_dir",
    "default_hostnames",
    "ensure_certificate",
    "generate_leaf",
    "generate_private_key",
    "generate_root_ca",
    "is_ip_address",
    "key_for_openssl",
    "key_is_encrypted",
    "load_certificate",
    "normalize_name",
    "os_reason",
    "pem_cert",
    "pem_key",
    "prepare_state_dir",
    "read_key_password",
    "read_private_key",
    "renewal_time",
    "write_atomically",
]

"""fedge.security: the recipes fedge's server and daemon call; primitives stay in private modules.

Layer 1 (mTLS, DESIGN §4) is the PKI in :mod:`fedge.security.pki`: a CA in a directory, server and
admin certificates, device enrollment by CSR and single-use token, revocation, peer verification.
"""

from fedge.security.pki import (
    DeviceKeys,
    Enrolled,
    Issued,
    IssuedCert,
    Pki,
    RevocationList,
    TokenRefused,
    build_csr,
    check_name,
    consume_token,
    create_token,
    device_signing_key,
    enroll_device,
    init_pki,
    install_device_cert,
    is_admin,
    issue_admin,
    issue_server,
    list_issued,
    load_device_keys,
    make_device_keys,
    revoke,
    sign_device_csr,
    verify_peer,
)

__all__ = [
    "DeviceKeys",
    "Enrolled",
    "Issued",
    "IssuedCert",
    "Pki",
    "RevocationList",
    "TokenRefused",
    "build_csr",
    "check_name",
    "consume_token",
    "create_token",
    "device_signing_key",
    "enroll_device",
    "init_pki",
    "install_device_cert",
    "is_admin",
    "issue_admin",
    "issue_server",
    "list_issued",
    "load_device_keys",
    "make_device_keys",
    "revoke",
    "sign_device_csr",
    "verify_peer",
]

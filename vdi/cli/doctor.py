"""`vdi doctor [--json]`: check this machine's readiness and say what to fix (vdi/doctor.py, docs/doctor.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from images.config import ImageSettings
from vdi.doctor import LIBVIRT_IMAGES, DoctorOptions, as_json, as_text, run_checks

CHECKS = ("libvirt", "kvm", "sshd", "disk", "time", "certificates")


def cmd_doctor(config, args: argparse.Namespace) -> int:
    results = run_checks(doctor_options(config, args))
    if args.json:
        print(json.dumps(as_json(results), indent=2, ensure_ascii=False))
    else:
        print(as_text(results))
    return 0 if as_json(results)["ok"] else 1


def doctor_options(config, args: argparse.Namespace) -> DoctorOptions:
    """The checks' targets: what the configuration file names (when there is one), then the options."""
    return DoctorOptions(
        libvirt_uri=args.libvirt_uri,
        ssh_address=args.ssh_address,
        ssh_port=args.ssh_port,
        disk_paths=disk_paths(config) + [("path", path) for path in args.path],
        min_free_gib=args.min_free_gib,
        database_url=config.database.url if config is not None else None,
        certificates=configured_certificates(config)
        + [("OCSP signer", path) for path in args.ocsp_signer]
        + [("extra", path) for path in args.cert],
        cert_warn_days=args.cert_warn_days,
        skip=set(args.skip),
    )


def disk_paths(config) -> list[tuple[str, Path]]:
    images = config.images.cache_dir if config is not None else ImageSettings().cache_dir
    paths = [("images", images), ("libvirt images", LIBVIRT_IMAGES)]
    for host in getattr(config, "hosts", None) or []:
        # Only this machine's own storage pools; a remote host's directory is checked by doctor on that host.
        if host.uri == "qemu:///system" and host.storage_path:
            paths.append((f"pool {host.storage_pool}", Path(host.storage_path)))
    return paths


def configured_certificates(config) -> list[tuple[str, Path]]:
    if config is None:
        return []
    named = [
        ("broker TLS", config.broker.tls_cert),
        ("client CA", config.broker.tls_client_ca),
        ("gateway TLS", config.gateway.tls_cert),
        ("directory CA", config.ldap.ca_file),
    ]
    named += [("CA", path) for path in config.certificate.trust_anchors]
    named += [("intermediate CA", path) for path in config.certificate.intermediates]
    return [(label, Path(path)) for label, path in named if path is not None]


def add_commands(sub) -> None:
    text = (
        "check this machine: libvirt, KVM, sshd, free disk, time sync, certificates' expiry; says what to fix"
    )
    doctor = sub.add_parser("doctor", help=text, description=text + " (exit status 1 when a check fails)")
    doctor.set_defaults(fn=cmd_doctor, needs_config="optional")
    doctor.add_argument("--json", action="store_true", help="print the results as JSON")
    doctor.add_argument(
        "--libvirt-uri", default="qemu:///system", help="libvirt connection to try (%(default)s)"
    )
    doctor.add_argument("--ssh-address", default="127.0.0.1", help="where sshd should answer (%(default)s)")
    doctor.add_argument("--ssh-port", type=int, default=22, help="sshd's port (%(default)s)")
    doctor.add_argument(
        "--path", type=Path, action="append", default=[], help="another directory whose free space to check"
    )
    doctor.add_argument(
        "--min-free-gib", type=float, default=10.0, help="warn below this much free space (%(default)s GiB)"
    )
    doctor.add_argument(
        "--ocsp-signer", type=Path, action="append", default=[], help="PEM of an OCSP responder's signer"
    )
    doctor.add_argument("--cert", type=Path, action="append", default=[], help="another PEM certificate file")
    doctor.add_argument(
        "--cert-warn-days", type=int, default=30, help="warn when a certificate expires sooner (%(default)s)"
    )
    doctor.add_argument(
        "--skip", action="append", default=[], choices=CHECKS, help="leave out a check (a session host: kvm)"
    )

"""The documents the libvirt driver sends: escaped, complete, and marked as ours."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import unquote

from hypervisor import domain_xml

NS = {"sw": domain_xml.NAMESPACE}


def _parse(text: str) -> ET.Element:
    return ET.fromstring(text)  # noqa: S314 - our own output


def _plan(**changes) -> domain_xml.DomainPlan:
    values = dict(
        name="desk-1",
        virt_type="qemu",
        memory_mib=256,
        vcpus=2,
        disk="/pool/desk-1.qcow2",
        vnc_listen="127.0.0.1",
        image_name="demo",
        image_version="abc",
        label="pool <a&b> 'x'",
        kernel="/pool/demo-abc.kernel",
        initrd="/pool/demo-abc.initrd",
        cmdline="console=tty0 quiet",
        console_log="/pool/desk-1.console.log",
    )
    values.update(changes)
    return domain_xml.DomainPlan(**values)


def test_domain_has_the_planned_resources_and_direct_kernel_boot():
    root = _parse(domain_xml.domain_xml(_plan()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "desk-1"
    assert root.find("memory").text == "256" and root.find("memory").get("unit") == "MiB"
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/kernel") == "/pool/demo-abc.kernel"
    assert root.findtext("os/initrd") == "/pool/demo-abc.initrd"
    assert root.findtext("os/cmdline") == "console=tty0 quiet"
    assert root.findtext("on_poweroff") == "destroy"
    assert root.find("devices/disk/source").get("file") == "/pool/desk-1.qcow2"
    assert root.find("devices/disk/target").get("bus") == "virtio"
    assert root.find("devices/video/model").get("type") == "vga"
    assert root.find("devices/serial/source").get("path") == "/pool/desk-1.console.log"


def test_kvm_plan_makes_a_kvm_domain():
    assert _parse(domain_xml.domain_xml(_plan(virt_type="kvm"))).get("type") == "kvm"


def test_image_without_kernel_boots_from_disk():
    root = _parse(domain_xml.domain_xml(_plan(kernel=None, initrd=None)))
    assert root.find("os/kernel") is None
    assert root.find("os/boot").get("dev") == "hd"


def test_vnc_listens_only_where_the_host_says():
    graphics = _parse(domain_xml.domain_xml(_plan(vnc_listen="10.0.0.5"))).find("devices/graphics")
    assert graphics.get("type") == "vnc" and graphics.get("autoport") == "yes"
    assert graphics.find("listen").get("address") == "10.0.0.5"


def test_metadata_marks_the_domain_as_ours_and_survives_markup_in_the_label():
    text = domain_xml.domain_xml(_plan())
    desktop = _parse(text).find("metadata/sw:desktop", NS)
    assert desktop is not None
    assert desktop.find("sw:image", NS).attrib == {"name": "demo", "version": "abc"}
    assert desktop.findtext("sw:label", namespaces=NS) == "pool <a&b> 'x'"
    assert "<a&b>" not in text


def test_kernel_cmdline_quotes_the_label_into_one_word():
    cmdline = domain_xml.kernel_cmdline("console=tty0 quiet", "desk-1", '행정안전부 / kim "x"')
    words = cmdline.split()
    assert words[:3] == ["console=tty0", "quiet", "vdi.desktop=desk-1"]
    assert len(words) == 4
    assert unquote(words[3].removeprefix("vdi.label=")) == '행정안전부 / kim "x"'


def test_kernel_cmdline_bounds_a_long_label():
    cmdline = domain_xml.kernel_cmdline("", "d", "가" * 5000)
    assert len(cmdline) < 2048


def test_overlay_volume_names_its_backing_image():
    xml = domain_xml.volume_xml("desk-1.qcow2", 1024, "qcow2", "0600", backing="/pool/demo-abc.qcow2")
    root = _parse(xml)
    assert root.find("target/format").get("type") == "qcow2"
    assert domain_xml.backing_store_path(xml) == "/pool/demo-abc.qcow2"
    assert root.find("backingStore/format").get("type") == "qcow2"


def test_vnc_endpoint_waits_for_an_assigned_port():
    unassigned = (
        "<domain><devices><graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>"
        "</devices></domain>"
    )
    assigned = (
        "<domain><devices><graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'>"
        "<listen type='address' address='127.0.0.1'/></graphics></devices></domain>"
    )
    assert domain_xml.vnc_endpoint(unassigned) is None
    assert domain_xml.vnc_endpoint(assigned) == ("127.0.0.1", 5901)


def test_a_vnc_password_goes_into_the_graphics_element_escaped():
    graphics = _parse(domain_xml.domain_xml(_plan(vnc_password="a'b\"<&"))).find("devices/graphics")
    assert graphics.get("passwd") == "a'b\"<&"


def test_without_a_password_the_display_has_none():
    assert _parse(domain_xml.domain_xml(_plan())).find("devices/graphics").get("passwd") is None


def test_the_password_stays_out_of_the_plans_repr():
    assert "hunter22" not in repr(_plan(vnc_password="hunter22"))

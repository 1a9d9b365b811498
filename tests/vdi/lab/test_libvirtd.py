"""The lab's libvirtd management."""

from vdi.lab.libvirtd import LibvirtDaemon


def test_running_libvirtd_is_used_and_not_stopped_by_someone_who_did_not_start_it(libvirtd, tmp_path):
    other = LibvirtDaemon(tmp_path)

    other.start()
    other.stop()

    assert other.healthy()
    assert libvirtd.healthy()
    assert other.describe().startswith("libvirtd at qemu:///system: answering")
    assert "not started by the lab" in other.describe()

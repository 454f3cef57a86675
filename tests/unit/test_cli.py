"""The xvm command line: results on stdout, progress on stderr, ``xvm: <message>`` and status 1
for an XvmError (never a traceback), argparse's status 2 for usage errors."""
import os
import subprocess
import sys

import pytest

import xvm
from xvm import cli
from xvm.errors import KvmUnavailableError
from xvm.host import Capabilities
from xvm.testhost import cache as tcache
from xvm.testhost import initramfs as tinitramfs


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    """An XVM_CACHE whose kernels/cloud is the real, already downloaded package."""
    try:
        package = tcache.kernel_package("cloud")
    except Exception as e:
        pytest.skip(f"the Debian cloud kernel is not in the cache ({e}); run scripts/setup.sh")
    if not tinitramfs.BUSYBOX.exists():
        pytest.skip("/bin/busybox missing (busybox-static); run scripts/setup.sh")
    root = tmp_path_factory.mktemp("xvm-cache")
    (root / "kernels").mkdir()
    (root / "kernels" / "cloud").symlink_to(package.root)
    return root


def lines(text):
    return dict(line.split(": ", 1) for line in text.strip().splitlines())


def test_image_build_prints_paths(kernel_cache, monkeypatch, capsys):
    monkeypatch.setenv("XVM_CACHE", str(kernel_cache))
    assert cli.main(["image", "build", "--no-vmlinux"]) == 0
    out, err = capsys.readouterr()
    fields = lines(out)
    assert os.path.isfile(fields["kernel"]) and os.path.basename(fields["kernel"]) == f"vmlinuz-{fields['release']}"
    assert os.path.isfile(fields["initrd"]) and fields["initrd"].startswith(str(kernel_cache / "images"))
    assert fields["vmlinux"] == "-"
    assert "virtio_blk" in fields["modules"].split()
    assert "writing initramfs" in err or "using cached" in err

    # Again, quietly: the same paths, nothing on stderr.
    assert cli.main(["image", "build", "--flavour", "cloud", "--quiet", "--no-vmlinux"]) == 0
    out2, err2 = capsys.readouterr()
    assert out2 == out and err2 == ""


def test_image_build_error_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XVM_CACHE", str(tmp_path))
    assert cli.main(["image", "build", "--no-download"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("xvm: no cloud kernel in ") and "scripts/setup.sh" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_error_without_traceback_in_a_real_process(tmp_path):
    env = dict(os.environ, XVM_CACHE=str(tmp_path / "empty"))
    proc = subprocess.run([sys.executable, "-m", "xvm.cli", "image", "build", "--no-download", "-m", "virtio_console"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("xvm: ") and "Traceback" not in proc.stderr


def test_unknown_flavour_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["image", "build", "--flavour", "rt"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_verb_is_a_usage_error(capsys):
    for argv in ([], ["image"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "required" in capsys.readouterr().err


class FakeHost:
    def __init__(self, caps=None, error=None):
        self.caps, self.error, self.closed = caps, error, False

    def __call__(self):  # stands in for xvm.connect
        if self.error:
            raise self.error
        return self

    def capabilities(self):
        return self.caps

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


def test_capabilities(monkeypatch, capsys):
    caps = Capabilities(kvm_api_version=12, virtualization="pvm", hvm=False, pv=True, max_vcpus=1024,
                        recommended_vcpus=2, memory_slots=32764,
                        kvm_capabilities={"KVM_CAP_IRQCHIP": 1, "KVM_CAP_TSC_CONTROL": 0},
                        missing_capabilities=())
    host = FakeHost(caps)
    monkeypatch.setattr(xvm, "connect", host)
    assert cli.main(["capabilities"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == ["kvm_api_version: 12", "virtualization: pvm", "hvm: no", "pv: yes"]
    assert "max_vcpus: 1024" in out and "missing_capabilities: none" in out
    at = out.index("kvm_capabilities:")
    assert out[at + 1:at + 3] == ["  KVM_CAP_IRQCHIP: 1", "  KVM_CAP_TSC_CONTROL: 0"]
    assert host.closed


def test_capabilities_without_kvm(monkeypatch, capsys):
    monkeypatch.setattr(xvm, "connect", FakeHost(error=KvmUnavailableError("cannot open /dev/kvm: No such file")))
    assert cli.main(["capabilities"]) == 1
    assert capsys.readouterr().err == "xvm: cannot open /dev/kvm: No such file\n"


def test_a_new_verb_is_one_entry(capsys):
    called = []
    verbs = cli.VERBS + (cli.Group("domain", "domains", (
        cli.Verb("list", "list domains", lambda args: called.append(args.all) or 0,
                 lambda p: p.add_argument("--all", action="store_true")),
    )),)
    args = cli.build_parser(verbs).parse_args(["domain", "list", "--all"])
    assert args.run(args) == 0 and called == [True]


def test_unwritable_cache_is_status_1(kernel_cache, tmp_path, monkeypatch, capsys):
    root = tmp_path / "cache"
    (root / "kernels").mkdir(parents=True)
    (root / "kernels" / "cloud").symlink_to((kernel_cache / "kernels" / "cloud").resolve())
    (root / "images").write_text("not a directory")
    monkeypatch.setenv("XVM_CACHE", str(root))
    assert cli.main(["image", "build", "--quiet", "--no-vmlinux"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"xvm: cannot write the image into {root / 'images'}")

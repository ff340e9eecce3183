"""Unit tests of openEuler's layouts: `dnf hotpatch list --format openeuler` and
`dnf hot-updateinfo`, against the fake helper proxy of test_hotpatch. The real dnf,
repository and helper are exercised by tests/dnf_e2e/updateinfo_test.go.
Run: /usr/bin/python3 -m pytest dnf-plugin/tests
"""

import json
import os
import sys

import dnf.cli
import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import hotupdateinfo  # noqa: E402
from test_hotpatch import FakeProxy, cand, command  # noqa: E402


def test_list_format_openeuler(capsys):
    proxy = FakeProxy([cand('HP001', advisory='SA-1', cves=['CVE-1']),
                       cand('HP002', advisory='SA-2', cves=['CVE-2'])],
                      entities={'victim-1.0-1/HP001-1-1/victim': 'ACTIVED'})
    command(['list', '--format', 'openeuler'], proxy).run()
    out = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert out == [['base-pkg/hotpatch', 'status'],
                   ['victim-1.0-1/HP001-1-1', 'ACTIVED'],
                   ['victim-1.0-1/HP002-1-1', 'AVAILABLE']]


def test_list_format_rejects_unknown():
    with pytest.raises(SystemExit):
        command(['list', '--format', 'yum'], FakeProxy([]))


def updateinfo(argv, proxy):
    return command(argv, proxy, cls=hotupdateinfo.HotUpdateinfoCommand)


def test_hot_updateinfo_list(capsys):
    proxy = FakeProxy([cand('HP001', advisory='SA-1', cves=['CVE-1', 'CVE-3']),
                       cand('HP002')],  # no advisory: not an updateinfo entry
                      entities={'victim-1.0-1/HP001-1-1/victim': 'ACCEPTED'})
    updateinfo([], proxy).run()
    out = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert out == [['ADVISORY', 'SEVERITY', 'BASE-PKG/HOTPATCH', 'STATUS'],
                   ['SA-1', 'Important/Sec.', 'victim-1.0-1/HP001-1-1', 'ACCEPTED']]
    updateinfo(['list', 'cves'], proxy).run()
    out = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert out[1:] == [['CVE-1', 'Important/Sec.', 'victim-1.0-1/HP001-1-1', 'ACCEPTED'],
                       ['CVE-3', 'Important/Sec.', 'victim-1.0-1/HP001-1-1', 'ACCEPTED']]
    updateinfo(['list', '--json'], proxy).run()
    rows = json.loads(capsys.readouterr().out)
    assert [(r['advisory'], r['type']) for r in rows] == [('SA-1', 'security')]


def test_hot_updateinfo_bad_input():
    with pytest.raises(dnf.cli.CliError):
        updateinfo(['list', 'bogus'], FakeProxy([]))
    with pytest.raises(dnf.cli.CliError):
        updateinfo(['info'], FakeProxy([]))
    with pytest.raises(SystemExit):
        updateinfo(['remove'], FakeProxy([]))

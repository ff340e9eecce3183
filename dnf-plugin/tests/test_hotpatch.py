"""Unit tests of the dnf hotpatch plugin against a fake syscare-helper proxy.

The real helper, dnf and rpm are exercised by tests/dnf_e2e (Go); these tests pin the
plugin's own logic: flag spellings, demands, the install / one Upgrade call / erase on
failure sequence and the error mapping. The upgrade policy itself (which patches are
superseded, applied, accepted, rolled back) is the helper's, tested in
helper/manager/upgrade_test.go and helper/e2e. Run: /usr/bin/python3 -m pytest dnf-plugin/tests
"""

import argparse
import configparser
import json
import os
import sys

import dbus
import dnf.cli.demand
import dnf.exceptions
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import hotpatch  # noqa: E402


def cand(patch, target_rel='1', advisory='', cves=(), installed=False, version='1'):
    return {
        'advisory': advisory, 'severity': 'Important' if cves else '', 'type': 'security',
        'title': 't', 'cves': list(cves),
        'package': 'patch-victim-1.0-%s-%s-%s-1.x86_64' % (target_rel, patch, version),
        'location': '/repo/x.rpm', 'repo_id': '/cache/local/repodata',
        'target': {'name': 'victim', 'epoch': 0, 'version': '1.0', 'release': target_rel,
                   'arch': 'x86_64'},
        'patch_name': patch, 'patch_version': version, 'patch_release': '1',
        'installed': installed,
    }


class FakeProxy(object):
    """The helper's D-Bus methods with the helper's argument and reply shapes."""

    def __init__(self, cands, entities=None, fail=None):
        self.cands = cands
        self.entities = entities or {}  # entity name -> status
        self.fail = fail or {}          # method -> DBusException
        self.calls = []

    def _rec(self, name, *args):
        self.calls.append((name,) + args)
        if name in self.fail:
            raise self.fail[name]

    def List(self, timeout=None):
        self._rec('List')
        return [dbus.Struct(('u-%d' % i, dbus.String(n), s, 'p-%d' % i, ''))
                for i, (n, s) in enumerate(sorted(self.entities.items()))]

    def Resolve(self, opts, timeout=None):
        self._rec('Resolve', dict(opts))
        assert isinstance(opts, dbus.Dictionary) and opts.signature == 'sv'
        out = self.cands
        cves = set(opts.get('cves', []))
        advs = set(opts.get('advisories', []))
        if cves or advs:
            out = [c for c in out if cves & set(c['cves']) or c['advisory'] in advs]
        if not opts.get('all'):
            out = hotpatch.newest_per_target(out)
        return json.dumps(out)

    def _transition(self, method, new, ids, force):
        self._rec(method, list(ids), bool(force))
        rows = []
        for i in ids:
            for name in list(self.entities):
                if name.startswith(i.replace('patch-victim-1.0-1-', 'victim-1.0-1/') + '-') or \
                        name.startswith(i + '/'):
                    self.entities[name] = new
                    rows.append(('u', name, new))
        return rows

    def Apply(self, ids, force, timeout=None):
        return self._transition('Apply', 'ACTIVED', ids, force)

    def Active(self, ids, force, timeout=None):
        return self._transition('Active', 'ACTIVED', ids, force)

    def Deactive(self, ids, force, timeout=None):
        return self._transition('Deactive', 'DEACTIVED', ids, force)

    def Accept(self, ids, force, timeout=None):
        return self._transition('Accept', 'ACCEPTED', ids, force)

    def Remove(self, ids, force, timeout=None):
        return self._transition('Remove', 'NOT-APPLIED', ids, force)

    def Upgrade(self, ids, opts, timeout=None):
        """The reply is the helper's for these ids: set upgrade_reply to what the helper
        answers (helper/manager/upgrade_test.go holds the helper to it); by default every
        patch is applied."""
        self._rec('Upgrade', list(ids), dict(opts))
        assert isinstance(opts, dbus.Dictionary) and opts.signature == 'sv'
        status = 'ACCEPTED' if opts.get('accept') else 'ACTIVED'
        rows = getattr(self, 'upgrade_reply', None)
        if rows is None:
            rows = [('u', i + '/victim', 'NOT-APPLIED', status, 'APPLIED', '') for i in ids]
        for r in rows:
            self.entities[r[1]] = r[3]
        return [dbus.Struct(r) for r in rows]

    def Target(self, ids, timeout=None):
        self._rec('Target', list(ids))
        return json.dumps([{'patch': 'HP002-1-1', 'uuid': 'p',
                            'target': {'name': 'victim', 'version': '1.0', 'release': '1'}}])

    def Info(self, ids, timeout=None):
        self._rec('Info', list(ids))
        return json.dumps([{'name': 'HP001', 'version': '1', 'release': '1'}])

    def Save(self, timeout=None):
        self._rec('Save')

    def Restore(self, accepted_only, timeout=None):
        self._rec('Restore', bool(accepted_only))
        return []

    def Rescan(self, timeout=None):
        self._rec('Rescan')
        # The RPMs DNF just installed appear as NOT-APPLIED entities.
        for c in self.cands:
            if c['package'] in FakeBase.last_installed:
                self.entities.setdefault(hotpatch.patch_key(c) + '/victim', 'NOT-APPLIED')


class FakePkg(object):
    def __init__(self, nevra):
        self.nevra = nevra


class FakeQuery(object):
    def __init__(self, base, installed):
        self.base, self.is_installed = base, installed

    def available(self):
        return FakeQuery(self.base, False)

    def installed(self):
        return FakeQuery(self.base, True)

    def filter(self, **kw):
        self.kw = kw
        return self

    def run(self):
        if 'nevra' in self.kw:
            return [FakePkg(self.kw['nevra'])]
        kw = self.kw
        return [FakePkg('%s-%s-%s.x86_64' % (kw['name'], kw['version'], kw['release']))]


class FakeRepo(object):
    id = 'local'

    def get_metadata_path(self, kind):
        return '/cache/local/repodata/abc-%s.xml.gz' % kind


class FakeBase(object):
    last_installed = []

    def __init__(self):
        self.installs, self.removes, self.erased = [], [], []
        self.conf = argparse.Namespace(downloadonly=False)
        self.repos = argparse.Namespace(iter_enabled=lambda: [FakeRepo()])
        self.sack = argparse.Namespace(query=lambda: FakeQuery(self, False))
        FakeBase.last_installed = []

    def package_install(self, pkg, strict=True):
        self.installs.append(pkg.nevra)
        FakeBase.last_installed.append(pkg.nevra)

    def package_remove(self, pkg):
        self.removes.append(pkg.nevra)


class FakeCli(object):
    def __init__(self):
        self.base = FakeBase()
        self.demands = dnf.cli.demand.DemandSheet()


def command(argv, proxy, cls=hotpatch.HotpatchCommand, conf=None):
    cli = FakeCli()
    cmd = cls(cli)
    parser = argparse.ArgumentParser()
    # DNF's own global options the plugin reuses.
    parser.add_argument('--cve', dest='cves', action='append', default=[])
    parser.add_argument('--advisory', dest='advisory', action='append', default=[])
    cmd.set_argparser(parser)
    cmd.opts = parser.parse_args(argv)
    cmd.config = conf
    cmd.helper_factory = lambda address: hotpatch.Helper(proxy)
    cmd._erase = lambda nevras: cli.base.erased.extend(nevras)
    cmd.configure()
    return cmd


def names(proxy):
    return [c[0] for c in proxy.calls]


# ------------------------------------------------------------------ flags and demands

@pytest.mark.parametrize('argv,sub,ids,accept', [
    (['list'], 'list', [], False),
    (['--list'], 'list', [], False),
    (['--apply', 'HP1'], 'apply', ['HP1'], False),
    (['--remove', 'HP1'], 'remove', ['HP1'], False),
    (['--active', 'HP1'], 'activate', ['HP1'], False),
    (['--deactive', 'HP1'], 'deactivate', ['HP1'], False),
    (['--accept', 'HP1'], 'accept', ['HP1'], False),
    (['active', 'HP1'], 'activate', ['HP1'], False),
    (['upgrade', '--accept'], 'upgrade', [], True),
    (['install', '--accept', 'HP1'], 'install', ['HP1'], True),
    (['install', 'HP1', 'HP2'], 'install', ['HP1', 'HP2'], False),
])
def test_subcommands_and_openeuler_spellings(argv, sub, ids, accept):
    cmd = command(argv, FakeProxy([]))
    assert (cmd.sub, cmd.ids, cmd.accept_flag) == (sub, ids, accept)


def test_every_option_has_help():
    parser = argparse.ArgumentParser()
    hotpatch.HotpatchCommand.set_argparser(parser)
    for action in parser._actions:
        assert action.help, 'hotpatch %s has no help text' % '/'.join(action.option_strings or [action.dest])


def test_hotupgrade_is_hotpatch_upgrade():
    cmd = command(['--accept'], FakeProxy([]), cls=hotpatch.HotupgradeCommand)
    assert (cmd.sub, cmd.accept_flag) == ('upgrade', True)
    assert cmd.cli.demands.resolving and cmd.cli.demands.root_user


@pytest.mark.parametrize('argv', [
    ['bogus'], [], ['--apply', 'A', '--remove', 'B'], ['list', '--apply', 'A'],
    ['apply'], ['info'], ['install'],
])
def test_bad_command_lines(argv):
    with pytest.raises(dnf.exceptions.Error):
        command(argv, FakeProxy([]))


def test_demands():
    lst = command(['list'], FakeProxy([]))
    d = lst.cli.demands
    assert d.sack_activation and d.available_repos and not d.root_user and not d.resolving
    inst = command(['install', '--cve', 'CVE-1'], FakeProxy([]))
    d = inst.cli.demands
    assert d.root_user and d.resolving and d.available_repos
    app = command(['apply', 'X'], FakeProxy([]))
    assert app.cli.demands.root_user and not app.cli.demands.resolving


# ------------------------------------------------------------------ list / info

def test_list_merges_installed_and_available(capsys):
    proxy = FakeProxy([cand('HP001', advisory='SA-1', cves=['CVE-1']),
                       cand('HP002', advisory='SA-2', cves=['CVE-2'])],
                      entities={'victim-1.0-1/HP001-1-1/victim': 'ACTIVED'})
    cmd = command(['list', '--json'], proxy)
    cmd.run()
    rows = json.loads(capsys.readouterr().out)
    assert [(r['patch'], r['state'], r['advisory']) for r in rows] == [
        ('patch-victim-1.0-1-HP001', 'ACTIVED', 'SA-1'),
        ('patch-victim-1.0-1-HP002', 'AVAILABLE', 'SA-2')]
    # The plugin hands the helper DNF's metadata, and asks for every applicable patch.
    resolve = [c for c in proxy.calls if c[0] == 'Resolve'][0][1]
    assert resolve['metadata_dirs'] == ['/cache/local/repodata'] and resolve['all']


def test_list_available_table(capsys):
    proxy = FakeProxy([cand('HP001', advisory='SA-1', cves=['CVE-1'])],
                      entities={})
    command(['list', '--available'], proxy).run()
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ['ADVISORY', 'CVES', 'SEVERITY', 'PATCH', 'TARGET', 'STATE']
    assert out[1].split() == ['SA-1', 'CVE-1', 'Important', 'patch-victim-1.0-1-HP001',
                              'victim-1.0-1', 'AVAILABLE']


def test_list_cves_openeuler(capsys):
    proxy = FakeProxy([cand('HP001', advisory='SA-1', cves=['CVE-1', 'CVE-3'])],
                      entities={'victim-1.0-1/HP001-1-1/victim': 'ACCEPTED'})
    command(['--list', 'cves'], proxy).run()
    out = capsys.readouterr().out.splitlines()
    assert [line.split() for line in out[1:]] == [['CVE-1', 'patch-victim-1.0-1-HP001', 'ACCEPTED'],
                                                 ['CVE-3', 'patch-victim-1.0-1-HP001', 'ACCEPTED']]


def test_info_by_cve_and_repo_id(capsys):
    proxy = FakeProxy([cand('HP001', advisory='SA-1', cves=['CVE-1'])])
    command(['info', 'cve-1', '--json'], proxy).run()
    info = json.loads(capsys.readouterr().out)
    assert len(info) == 1 and info[0]['state'] == 'AVAILABLE' and info[0]['repo_id'] == 'local'


def test_info_unknown():
    proxy = FakeProxy([], fail={'Info': dbus.exceptions.DBusException(
        'patch not found', name='org.openeuler.SysCare1.Error.NotFound')})
    with pytest.raises(dnf.exceptions.Error, match='no hot patch matches'):
        command(['info', 'nothing'], proxy).run()


# ------------------------------------------------------------------ install / upgrade

def test_upgrade_installs_newest_supersedes_and_accepts(capsys):
    proxy = FakeProxy([cand('HP001', installed=True), cand('HP002'),
                       cand('HP005', target_rel='2')],  # for another target: the helper never offers it
                      entities={'victim-1.0-1/HP001-1-1/victim': 'ACTIVED'})
    proxy.cands = proxy.cands[:2]
    # What the helper answers for this host (helper/manager/upgrade_test.go: HP001 goes
    # out, HP002 comes in and is accepted, in one transaction).
    proxy.upgrade_reply = [
        ('a', 'victim-1.0-1/HP001-1-1/victim', 'ACTIVED', 'NOT-APPLIED', 'SUPERSEDED', 'superseded by HP002-1-1'),
        ('b', 'victim-1.0-1/HP002-1-1/victim', 'NOT-APPLIED', 'ACCEPTED', 'APPLIED', '')]
    cmd = command(['upgrade', '--accept'], proxy)
    cmd.run()
    assert cmd.base.installs == ['patch-victim-1.0-1-HP002-1-1.x86_64']
    assert 'Apply' not in names(proxy) and 'Upgrade' not in names(proxy)  # nothing applied before DNF ran
    cmd.run_transaction()
    changing = ('Save', 'Rescan', 'Remove', 'Apply', 'Accept', 'Restore', 'Upgrade')
    seq = [c for c in proxy.calls if c[0] in changing]
    assert seq == [('Upgrade', ['victim-1.0-1/HP002-1-1'], {'accept': True, 'force': False})]
    out = capsys.readouterr().out
    assert 'SUPERSEDED' in out and 'ACCEPTED' in out
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows == [['victim-1.0-1/HP001-1-1', 'SUPERSEDED'], ['victim-1.0-1/HP002-1-1', 'ACCEPTED']]


def test_install_by_advisory_passes_filter():
    proxy = FakeProxy([cand('HP001', advisory='SA-1'), cand('HP002', advisory='SA-2')])
    cmd = command(['install', '--advisory', 'SA-1'], proxy)
    cmd.run()
    assert cmd.base.installs == ['patch-victim-1.0-1-HP001-1-1.x86_64']
    assert [c for c in proxy.calls if c[0] == 'Resolve'][0][1]['advisories'] == ['SA-1']


def test_install_by_patch_name():
    proxy = FakeProxy([cand('HP001'), cand('HP002')])
    cmd = command(['install', 'patch-victim-1.0-1-HP001'], proxy)
    cmd.run()
    assert cmd.base.installs == ['patch-victim-1.0-1-HP001-1-1.x86_64']


def test_install_nothing_matches():
    with pytest.raises(dnf.exceptions.Error, match='no hot patch'):
        command(['install', 'HP404'], FakeProxy([cand('HP001')])).run()


def test_failed_activation_rolls_back(capsys):
    err = dbus.exceptions.DBusException('build-id mismatch',
                                        name='org.openeuler.SysCare1.Error.VerificationFailed')
    proxy = FakeProxy([cand('HP002')], fail={'Upgrade': err})
    cmd = command(['upgrade'], proxy)
    cmd.run()
    with pytest.raises(dnf.exceptions.Error, match='VerificationFailed: build-id mismatch'):
        cmd.run_transaction()
    # The helper rolled its transaction back: the plugin changes nothing more there.
    assert names(proxy).count('Upgrade') == 1
    assert not set(names(proxy)) & {'Remove', 'Restore', 'Apply', 'Accept'}
    assert cmd.base.erased == ['patch-victim-1.0-1-HP002-1-1.x86_64']
    assert 'FAILED' in capsys.readouterr().out


def test_downloadonly_applies_nothing():
    proxy = FakeProxy([cand('HP002')])
    cmd = command(['upgrade'], proxy)
    cmd.run()
    cmd.base.conf.downloadonly = True
    cmd.run_transaction()
    assert 'Apply' not in names(proxy) and 'Upgrade' not in names(proxy)


def test_config_accept_by_default():
    conf = configparser.ConfigParser()
    conf.read_string('[main]\nenabled = 1\naccept = 1\n')
    proxy = FakeProxy([cand('HP002')])
    cmd = command(['upgrade'], proxy, conf=conf)
    cmd.run()
    cmd.run_transaction()
    assert [c[2]['accept'] for c in proxy.calls if c[0] == 'Upgrade'] == [True]


def test_already_active_is_left_alone():
    proxy = FakeProxy([cand('HP002', installed=True)],
                      entities={'victim-1.0-1/HP002-1-1/victim': 'ACTIVED'})
    cmd = command(['upgrade'], proxy)
    cmd.run()
    cmd.run_transaction()
    assert cmd.base.installs == [] and 'Save' not in names(proxy) and 'Apply' not in names(proxy)
    assert 'Upgrade' not in names(proxy)


# ------------------------------------------------------------------ transitions

def test_remove_erases_the_rpm(capsys):
    proxy = FakeProxy([], entities={'victim-1.0-1/HP002-1-1/victim': 'ACTIVED'})
    cmd = command(['remove', 'victim-1.0-1/HP002'], proxy)
    assert cmd.cli.demands.allow_erasing
    cmd.run()
    assert ('Remove', ['victim-1.0-1/HP002'], False) in proxy.calls
    assert cmd.base.removes == ['patch-victim-1.0-1-HP002-1-1.x86_64']


def test_apply_force_and_error_mapping():
    proxy = FakeProxy([], fail={'Apply': dbus.exceptions.DBusException(
        'replaces greet of HP001', name='org.openeuler.SysCare1.Error.Conflict')})
    with pytest.raises(hotpatch.HelperError, match='^Conflict: replaces greet of HP001$'):
        command(['apply', 'HP002', '--force'], proxy).run()
    assert proxy.calls[-1] == ('Apply', ['HP002'], True)


def test_install_then_one_upgrade_call(capsys):
    proxy = FakeProxy([cand('HP001', advisory='SA-1', cves=['CVE-1'])])
    cmd = command(['install', '--cve', 'CVE-1', '--force'], proxy)
    cmd.run()
    cmd.run_transaction()
    assert [c for c in proxy.calls if c[0] == 'Upgrade'] == [
        ('Upgrade', ['victim-1.0-1/HP001-1-1'], {'accept': False, 'force': True})]
    assert capsys.readouterr().out.splitlines()[1].split() == ['victim-1.0-1/HP001-1-1', 'ACTIVED']


def test_helper_values_are_plain():
    rows = hotpatch.Helper(FakeProxy([], entities={'a/b/c': 'ACTIVED'})).list()
    assert rows == [{'uuid': 'u-0', 'name': 'a/b/c', 'status': 'ACTIVED', 'patch_uuid': 'p-0',
                     'problem': ''}]
    assert type(rows[0]['name']) is str


# ------------------------------------------------------------------ health gate, policy, dry run

def test_health_gate_passes_through():
    proxy = FakeProxy([cand('HP002')])
    cmd = command(['upgrade', '--accept', '--health', 'redis-cli ping', '--health', "sh -c 'a | b'",
                   '--soak', '30s', '--interval', '500ms', '--check-timeout', '2'], proxy)
    cmd.run()
    cmd.run_transaction()
    up = [c for c in proxy.calls if c[0] == 'Upgrade']
    assert up == [('Upgrade', ['victim-1.0-1/HP002-1-1'],
                   {'accept': True, 'force': False, 'health': ['redis-cli ping', "sh -c 'a | b'"],
                    'soak_ms': 30000, 'interval_ms': 500, 'check_timeout_ms': 2000})]
    opts = proxy.calls[-1][2]
    assert isinstance(opts['soak_ms'], dbus.UInt64) and opts['health'].signature == 's'


def test_failed_health_check_erases_the_rpms(capsys):
    err = dbus.exceptions.DBusException('`redis-cli ping` failed after 2s of a 30s soak: exit status 1',
                                        name='org.openeuler.SysCare1.Error.HealthCheckFailed')
    proxy = FakeProxy([cand('HP002')], fail={'Upgrade': err})
    cmd = command(['upgrade', '--health', 'redis-cli ping', '--soak', '30s'], proxy)
    cmd.run()
    with pytest.raises(dnf.exceptions.Error, match='HealthCheckFailed: `redis-cli ping` failed'):
        cmd.run_transaction()
    assert cmd.base.erased == ['patch-victim-1.0-1-HP002-1-1.x86_64']


@pytest.mark.parametrize('argv', [
    ['upgrade', '--soak', '30s'], ['upgrade', '--health', 'x', '--soak', 'soon'],
    ['apply', 'X', '--health', 'x'], ['upgrade', '--policy', '--accept'],
    ['upgrade', '--policy', '--health', 'x'], ['install', 'HP1', '--policy'], ['remove', 'X', '--dry-run'],
])
def test_bad_gate_and_policy_lines(argv):
    with pytest.raises(dnf.exceptions.Error):
        command(argv, FakeProxy([]))


def test_policy_run_asks_the_helper():
    c = cand('HP002')
    c['policy'] = {'accept': True, 'health': ['true'], 'soak': '30s'}
    proxy = FakeProxy([c])
    cmd = command(['upgrade', '--policy'], proxy)
    cmd.run()
    cmd.run_transaction()
    assert [x for x in proxy.calls if x[0] == 'Resolve'][0][1]['policy'] is True
    assert [x for x in proxy.calls if x[0] == 'Upgrade'] == [
        ('Upgrade', ['victim-1.0-1/HP002-1-1'], {'policy': True, 'force': False})]


def test_policy_run_with_nothing_to_do_is_recorded():
    proxy = FakeProxy([])
    cmd = command(['upgrade', '--policy'], proxy)
    cmd.run()
    cmd.run_transaction()
    assert [x for x in proxy.calls if x[0] == 'Upgrade'] == [('Upgrade', [], {'policy': True, 'force': False})]
    assert cmd.base.installs == []


def test_policy_run_outside_the_window_skips():
    err = dbus.exceptions.DBusException('outside the maintenance window (Sat 02:00-04:00)',
                                        name='org.openeuler.SysCare1.Error.OutsideWindow')
    proxy = FakeProxy([cand('HP002')], fail={'Resolve': err})
    cmd = command(['upgrade', '--policy'], proxy)
    cmd.run()
    proxy.fail = {'Upgrade': err}
    cmd.run_transaction()  # no error: a skipped run is a normal outcome
    assert cmd.base.installs == []
    assert [x[0] for x in proxy.calls if x[0] == 'Upgrade'] == ['Upgrade']


def test_dry_run_changes_nothing(capsys):
    c = cand('HP002', advisory='SA-2', cves=['CVE-2'])
    c['policy'] = {'accept': True, 'health': ['redis-cli ping'], 'soak': '30s'}
    proxy = FakeProxy([c])
    cmd = command(['upgrade', '--policy', '--dry-run'], proxy)
    assert not cmd.cli.demands.resolving and not cmd.cli.demands.root_user
    cmd.run()
    cmd.run_transaction()
    assert cmd.base.installs == [] and 'Upgrade' not in names(proxy)
    out = capsys.readouterr().out
    assert out.strip() == ('dry run: would install and activate patch-victim-1.0-1-HP002 (SA-2, Important, CVE-2) '
                           'for victim-1.0-1; health: redis-cli ping over 30s; then ACCEPTED')


def test_parse_duration():
    assert [hotpatch.parse_duration(x) for x in ('30s', '2m', '500ms', '1.5', '1h')] == [30, 120, 0.5, 1.5, 3600]
    for bad in ('soon', '-1s', ''):
        with pytest.raises(ValueError):
            hotpatch.parse_duration(bad)


class _Stream(object):
    def __init__(self, tty):
        self.tty, self.data = tty, ''

    def isatty(self):
        return self.tty

    def write(self, s):
        self.data += s

    def flush(self):
        pass


def test_progress_line_only_on_a_terminal():
    assert hotpatch.progress_line(_Stream(False)) is None
    out = _Stream(True)
    show = hotpatch.progress_line(out)
    show('activate', 'victim-1.0-1/HP001-1-1/victim', 1, 40)
    show('activate', 'victim-1.0-1/HP001-1-1/victim', 40, 40)
    show.clear()
    show.clear()  # once only
    assert out.data == ('\r\033[Kactivate victim-1.0-1/HP001-1-1/victim: 1 of 40 processes'
                        '\r\033[Kactivate victim-1.0-1/HP001-1-1/victim: 40 of 40 processes\r\033[K')


def test_upgrade_progress_cleared_before_the_summary(capsys, monkeypatch):
    # On a terminal the plugin hands the helper call a progress line and clears it
    # before the summary; a fake helper cannot send signals, so it calls it itself.
    out = _Stream(True)
    monkeypatch.setattr(sys, 'stderr', out)
    seen = []
    orig = hotpatch.Helper.upgrade

    def upgrade(self, *a, **kw):
        seen.append(kw.get('progress'))
        kw['progress']('activate', 'victim-1.0-1/HP001-1-1/victim', 3, 3)
        return orig(self, *a, **kw)
    monkeypatch.setattr(hotpatch.Helper, 'upgrade', upgrade)
    proxy = FakeProxy([cand('HP001')])
    cmd = command(['upgrade'], proxy)
    cmd.run()
    cmd.run_transaction()
    assert isinstance(seen[0], hotpatch.ProgressLine)
    assert out.data.endswith('3 of 3 processes\r\033[K')
    assert 'HP001' in capsys.readouterr().out

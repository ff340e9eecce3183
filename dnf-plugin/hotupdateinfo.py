# dnf hot-updateinfo: openEuler's command for the advisories of hot patches, with
# openEuler's columns. It is a view of what `dnf hotpatch list` knows (the helper
# resolves the repositories' advisories for this host), kept apart from hotpatch.py so
# that the command and its layout stay in one place.
"""DNF 4 plugin providing `dnf hot-updateinfo` (openEuler's spelling)."""

import fnmatch
import importlib
import itertools
import logging

import dnf
import dnf.cli
import hawkey

# hotpatch.py sits next to this file; DNF imports both into its dynamic plugin package
# (the unit tests put the directory on sys.path instead).
try:
    hotpatch = importlib.import_module('dnf.plugin.dynamic.hotpatch')
except ImportError:
    import hotpatch

logger = logging.getLogger('dnf.plugin')

# DNF's updateinfo prints the type of a security advisory as "Sec." after its severity.
TYPE_LABELS = {'security': 'Sec.', 'bugfix': 'Bugfix', 'enhancement': 'Enhancement',
               'newpackage': 'Newpackage'}


def severity_type(row):
    """'Important/Sec.', as `dnf updateinfo list` and openEuler's hot-updateinfo show it."""
    kind = TYPE_LABELS.get(row.get('type') or 'security', row.get('type') or '-')
    return '%s/%s' % (row.get('severity') or 'None', kind)


def base_hotpatch(row):
    """openEuler's base-pkg/hotpatch column: TARGET-NVR/PATCH-VER-REL."""
    return row['id']


class HotUpdateinfoCommand(hotpatch.HotpatchCommand):
    """dnf hot-updateinfo list [cves] | info ID...: hot patch advisories, openEuler layout."""

    aliases = ('hot-updateinfo',)
    summary = 'show the advisories of hot patches (openEuler: hot-updateinfo)'

    @staticmethod
    def set_argparser(parser):
        parser.add_argument('subcommand', nargs='?', default='list', choices=('list', 'info'),
                            metavar='{list,info}', help='list advisories (default), or info')
        parser.add_argument('ids', nargs='*', metavar='cves|ID',
                            help='list: "cves" lists one line per CVE; info: advisory, CVE or patch')
        parser.add_argument('--json', action='store_true', help='machine-readable output')

    def configure(self):
        self.sub = self.opts.subcommand
        self.ids = list(self.opts.ids)
        self.opts.show = 'all'
        self._list_cves = False
        if self.sub == 'list' and self.ids not in ([], ['cves']):
            raise dnf.cli.CliError('hot-updateinfo list takes only "cves"')
        if self.sub == 'info' and not self.ids:
            raise dnf.cli.CliError('hot-updateinfo info needs an advisory, CVE or patch')
        demands = self.cli.demands
        demands.sack_activation = True
        demands.available_repos = True

    def run(self):
        if self.sub == 'info':
            return self.run_info()
        rows = [r for r in self.rows('all') if r['advisory']]
        for r in rows:
            r['type'] = r.get('type') or self._types().get(r['advisory'], '')
        if self.opts.json:
            self.print_json(rows)
            return
        if self.ids == ['cves']:
            out = [(cve, severity_type(r), base_hotpatch(r), r['state']) for r in rows for cve in r['cves']]
            print(hotpatch.table(out, ('CVE-ID', 'SEVERITY', 'BASE-PKG/HOTPATCH', 'STATUS')))
            return
        out = [(r['advisory'], severity_type(r), base_hotpatch(r), r['state']) for r in rows]
        print(hotpatch.table(out, ('ADVISORY', 'SEVERITY', 'BASE-PKG/HOTPATCH', 'STATUS')))

    def _types(self):
        """Advisory id -> type, from what the helper resolved."""
        if getattr(self, '_type_of', None) is None:
            self._type_of = {c['advisory']: c.get('type', '') for c in self.resolve(True)}
        return self._type_of


def _targets_installed(pkg, installed):
    """Whether the package a patch RPM is for is installed at the exact version the RPM
    requires (Requires: NAME = [E:]V-R, as every patch RPM has)."""
    return any(' = ' in str(req) and installed.filter(provides=req)
               for req in pkg.requires if not str(req).startswith('syscare'))


def hot_patch_advisories(sack):
    """(advisory package, advisory) of each hot patch RPM the repositories offer that is
    not installed and whose target package is installed at its exact version.

    DNF's updateinfo starts from the installed packages and shows the advisory packages
    of the same name: a hot patch RPM has a name of its own (patch-TARGET-NVR-PATCH) that
    no installed package has until it is installed, so DNF alone never lists it as
    available; this finds them from the other side, the repositories' patch RPMs."""
    installed = sack.query().installed()
    offered = sack.query().available().filter(name__glob='patch-*')
    for apkg in offered.get_advisory_pkgs(hawkey.EQ):
        if installed.filter(name=apkg.name, evr=apkg.evr, arch=apkg.arch):
            continue  # DNF lists it itself (updateinfo --installed)
        pkgs = offered.filter(name=apkg.name, evr=apkg.evr, arch=apkg.arch)
        pkgs = pkgs.run()
        if pkgs and _targets_installed(pkgs[0], installed):
            yield apkg, apkg.get_advisory(sack)


def extend_updateinfo(cmd):
    """Makes `dnf updateinfo list/info/summary` (available, the default, and --all) show
    the hot patches the repositories offer for installed packages, marked not installed.

    DNF 4 offers plugins no hook into a built-in command's output, so this wraps the two
    methods of the command object that collect the advisories (after DNF configured it,
    in the plugin's config hook), and matches filters with DNF's own matcher; on a DNF
    without those methods it leaves the command as it is."""
    matcher = getattr(cmd, '_advisory_matcher', None)
    if matcher is None or not hasattr(cmd, 'available_apkg_adv_insts'):
        logger.debug('hotupdateinfo: this DNF updateinfo cannot be extended')
        return

    def hot(specs):
        for apkg, advisory in hot_patch_advisories(cmd.base.sack):
            if matcher(advisory) or any(fnmatch.fnmatchcase(apkg.name, pat) for pat in specs):
                yield apkg, advisory, False

    for name in ('available_apkg_adv_insts', 'all_apkg_adv_insts'):
        own = getattr(cmd, name)
        setattr(cmd, name, lambda specs, own=own: itertools.chain(own(specs), hot(specs)))


class HotUpdateinfo(dnf.Plugin):
    """Registers `dnf hot-updateinfo` and puts hot patches into `dnf updateinfo`; its
    configuration is hotpatch.conf's."""

    name = 'hotupdateinfo'

    def __init__(self, base, cli):
        super(HotUpdateinfo, self).__init__(base, cli)
        if cli is not None:
            cli.register_command(HotUpdateinfoCommand)

    def config(self):
        cmd = getattr(self.cli, 'command', None) if self.cli is not None else None
        if cmd is not None and 'updateinfo' in getattr(cmd, 'aliases', ()):
            extend_updateinfo(cmd)

#!/usr/bin/python
# -*- coding: utf-8 -*-
# The module runs on the managed host and talks to syscare-helper only through the
# syscare CLI's --json output (the same D-Bus API every client uses): it holds no patch
# logic. Superseding, the health gate and the rollback of a failed upgrade are the
# helper's, as one transaction.
"""Ansible module syscare.hotpatch.hotpatch."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: hotpatch
short_description: List, apply, upgrade and remove SysCare hot patches
description:
  - Takes the named hot patches (already installed as RPMs under /usr/lib/syscare/patches)
    to a state through syscare-helper, as one transaction. With C(supersede) (the default)
    the named patches replace every other patch of their target package, as
    C(dnf hotpatch upgrade) does.
  - With C(health), the helper runs the checks after activation over C(soak) and accepts
    only after a healthy soak; a failed check puts everything back and the task fails with
    the check, its output and C(rolled_back=true).
  - Always returns the host's patches as the fact C(syscare_hotpatches).
  - Idempotent; supports check mode and diff mode.
options:
  patches:
    description: Patch identifiers (UUID, TARGET-NVR/PATCH[-VER-REL], or the patch RPM name).
    type: list
    elements: str
    default: []
  state:
    description:
      - C(present) (at least ACTIVED), C(accepted) (ACCEPTED), C(absent) (NOT-APPLIED),
        or C(list) (change nothing, return the facts).
    type: str
    choices: [present, accepted, absent, list]
    default: present
  supersede:
    description: The named patches replace the other patches of their target packages.
    type: bool
    default: true
  health:
    description: Health check commands, run without a shell after activation (use C(sh -c) for one).
    type: list
    elements: str
    default: []
  soak:
    description: How long the checks keep running (e.g. C(30s)).
    type: str
  interval:
    description: Time between two runs of the checks.
    type: str
  check_timeout:
    description: A check running longer is killed and fails.
    type: str
  force:
    description: Activate over a conflicting patch.
    type: bool
    default: false
  syscare:
    description: The syscare CLI.
    type: str
    default: syscare
  bus:
    description: D-Bus address of syscare-helper (default the system bus).
    type: str
'''

EXAMPLES = r'''
- name: Upgrade to HP002 behind a health gate and accept it
  syscare.hotpatch.hotpatch:
    patches: [redis-6.2.5-1/HP002]
    state: accepted
    health: ["redis-cli ping"]
    soak: 30s

- name: Gather the host's hot patches
  syscare.hotpatch.hotpatch:
    state: list
'''

RETURN = r'''
entities:
  description: What the helper did per entity (syscare upgrade --json rows), empty when nothing changed.
  type: list
  returned: always
rolled_back:
  description: The helper put the host back after a failure (failed health check included).
  type: bool
  returned: on failure
ansible_facts:
  description: syscare_hotpatches, every patch entity of the host with its status.
  type: dict
  returned: always
'''

import json

from ansible.module_utils.basic import AnsibleModule

ORDER = ['NOT-APPLIED', 'DEACTIVED', 'ACTIVED', 'ACCEPTED']


class Syscare(object):
    def __init__(self, module):
        self.module = module
        p = module.params
        self.base = [p['syscare']] + (['--bus', p['bus']] if p['bus'] else []) + ['--json']

    def run(self, args, check=True):
        rc, out, err = self.module.run_command(self.base + args)
        if check and rc != 0:
            self.module.fail_json(msg='syscare %s: %s' % (' '.join(args), (err or out).strip()), rc=rc)
        return rc, out, err

    def json(self, args):
        _, out, _ = self.run(args)
        try:
            return json.loads(out or '[]')
        except ValueError as e:
            self.module.fail_json(msg='syscare %s: unreadable output: %s' % (' '.join(args), e))


def target_of(name):
    return name.split('/', 1)[0]


def patch_of(name):
    return '/'.join(name.split('/')[:2])


def plan(listing, named, state, supersede):
    """The entities that would change: [(entity name, from, to)]."""
    changes = []
    goal = {'present': 'ACTIVED', 'accepted': 'ACCEPTED', 'absent': 'NOT-APPLIED'}[state]
    named_uuids = set(e['uuid'] for e in named)
    for e in named:
        cur = e['status']
        if state == 'absent':
            if cur != 'NOT-APPLIED':
                changes.append((e['name'], cur, 'NOT-APPLIED'))
        elif cur not in ORDER or ORDER.index(cur) < ORDER.index(goal):
            changes.append((e['name'], cur, goal))
    if state != 'absent' and supersede:
        targets = set(target_of(e['name']) for e in named)
        named_patches = set(patch_of(e['name']) for e in named)
        for e in listing:
            if e['uuid'] in named_uuids or patch_of(e['name']) in named_patches:
                continue
            if target_of(e['name']) in targets and e['status'] not in ('NOT-APPLIED', 'BROKEN'):
                changes.append((e['name'], e['status'], 'NOT-APPLIED'))
    return changes


def render(listing):
    return ''.join('%s: %s\n' % (e['name'], e['status']) for e in sorted(listing, key=lambda e: e['name']))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            patches=dict(type='list', elements='str', default=[]),
            state=dict(type='str', default='present', choices=['present', 'accepted', 'absent', 'list']),
            supersede=dict(type='bool', default=True),
            health=dict(type='list', elements='str', default=[]),
            soak=dict(type='str'),
            interval=dict(type='str'),
            check_timeout=dict(type='str'),
            force=dict(type='bool', default=False),
            syscare=dict(type='str', default='syscare'),
            bus=dict(type='str'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    sc = Syscare(module)
    listing = sc.json(['list'])
    facts = {'syscare_hotpatches': listing}
    if p['state'] == 'list':
        module.exit_json(changed=False, entities=[], ansible_facts=facts)
    if not p['patches']:
        module.fail_json(msg='patches is required unless state is list')
    if (p['soak'] or p['interval'] or p['check_timeout']) and not p['health']:
        module.fail_json(msg='soak, interval and check_timeout need health')
    if p['health'] and p['state'] == 'absent':
        module.fail_json(msg='health is for state present or accepted')
    named = sc.json(['status'] + p['patches'])
    changes = plan(listing, named, p['state'], p['supersede'])
    before = render(listing)
    if not changes:
        module.exit_json(changed=False, entities=[], ansible_facts=facts)
    after_map = dict((e['name'], e['status']) for e in listing)
    for name, _, to in changes:
        after_map[name] = to
    diff = {'before': before, 'after': ''.join('%s: %s\n' % kv for kv in sorted(after_map.items())),
            'before_header': 'syscare list', 'after_header': 'syscare list (planned)'}
    if module.check_mode:
        module.exit_json(changed=True, entities=[{'name': n, 'old_status': f, 'status': t} for n, f, t in changes],
                         diff=diff, ansible_facts=facts)

    if p['state'] == 'absent':
        args = ['remove']
    else:
        args = ['upgrade' if p['supersede'] else 'apply']
        if p['state'] == 'accepted':
            args.append('--accept')
        for h in p['health']:
            args += ['--health', h]
        for opt in ('soak', 'interval', 'check_timeout'):
            if p[opt]:
                args += ['--' + opt.replace('_', '-'), p[opt]]
    if p['force']:
        args.append('--force')
    rc, out, err = sc.run(args + p['patches'], check=False)
    listing_after = sc.json(['list'])
    facts = {'syscare_hotpatches': listing_after}
    if rc != 0:
        # The helper ran one transaction and put back whatever it had moved.
        still = render(listing_after) != before
        module.fail_json(msg='syscare %s failed: %s' % (args[0], (err or out).strip()), rc=rc,
                         rolled_back=not still, changed=still, ansible_facts=facts)
    try:
        entities = json.loads(out or '[]')
    except ValueError:
        entities = []
    diff['after'] = render(listing_after)
    module.exit_json(changed=True, entities=entities, diff=diff, ansible_facts=facts)


if __name__ == '__main__':
    main()

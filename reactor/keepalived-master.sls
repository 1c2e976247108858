# -*- coding: utf-8 -*-
# vim: ft=sls
{#- A node became VRRP master (the keepalived beacon's event). The second
    line of defence behind the transition hook: the consistency state on the
    new master (runs the primary transition if the hook did not, e.g. after
    an SELinux denial as in the seed), a resync request on its peer, and a
    line in the master's transition log.

    The event comes from a minion: act only if the sender is a node of
    hafw_reactor:pairs (master config), the tag names that sender, and the
    event is about the node's sync group (or an instance of a node without
    one), so that one takeover triggers one reaction. #}
{%- set cfg = opts.get('hafw_reactor', {}) %}
{%- set pairs = cfg.get('pairs', {}) %}
{%- set sender = data.get('id') %}
{%- set parts = tag.split('/') %}
{%- set about_group = data.get('kind') == 'GROUP' or (data.get('kind') == 'INSTANCE' and not data.get('sync_group')) %}
{%- if sender in pairs and parts[2:4] == [sender, 'keepalived'] and parts[-1] == 'MASTER' and about_group %}
{%-   set peer = pairs[sender] %}

hafw-consistent-on-{{ sender }}:
  local.state.single:
    - tgt: {{ sender | json }}
    - args:
      - fun: vrrp_sync.consistent
      - name: {{ data.get('name', 'vrrp') | json }}
      - settle: {{ cfg.get('settle', 1) }}
      # a highstate running on the node (its startup highstate after a reboot, an
      # operator's apply) makes a second state run fail at once: wait for it instead
      - queue: true

hafw-resync-on-{{ peer }}:
  local.conntrack.request_resync:
    - tgt: {{ peer | json }}

hafw-record-{{ sender }}-master:
  runner.hafw.record:
    - args:
      - node: {{ sender | json }}
      - state: MASTER
      - name: {{ data.get('name') | json }}
      - kind: {{ data.get('kind') | json }}
      - previous: {{ data.get('previous') | json }}
      - source: {{ data.get('source') | json }}
      - at: {{ data.get('at') | json }}
{%- endif %}

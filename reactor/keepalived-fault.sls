# -*- coding: utf-8 -*-
# vim: ft=sls
{#- A node went to VRRP FAULT (the keepalived beacon's event): raise an
    alert event that carries conntrackd's sync status at that moment, for
    whoever watches the bus (a returner, an engine, a person), and log it.
    Same sender checks as keepalived-master.sls. #}
{%- set cfg = opts.get('hafw_reactor', {}) %}
{%- set pairs = cfg.get('pairs', {}) %}
{%- set sender = data.get('id') %}
{%- set parts = tag.split('/') %}
{%- if sender in pairs and parts[2:4] == [sender, 'keepalived'] and parts[-1] == 'FAULT' %}

hafw-alert-{{ sender }}-fault:
  runner.event.send:
    - args:
      - tag: {{ ('hafw/alert/%s/fault' % sender) | json }}
      - data:
          node: {{ sender | json }}
          peer: {{ pairs[sender] | json }}
          name: {{ data.get('name') | json }}
          kind: {{ data.get('kind') | json }}
          previous: {{ data.get('previous') | json }}
          sync_status: {{ data.get('sync_status') | json }}

hafw-record-{{ sender }}-fault:
  runner.hafw.record:
    - args:
      - node: {{ sender | json }}
      - state: FAULT
      - name: {{ data.get('name') | json }}
      - kind: {{ data.get('kind') | json }}
      - previous: {{ data.get('previous') | json }}
      - source: {{ data.get('source') | json }}
      - at: {{ data.get('at') | json }}
{%- endif %}

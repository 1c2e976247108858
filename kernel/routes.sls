# -*- coding: utf-8 -*-
# vim: ft=sls
{#- node.routes: one script (routes.sh) installs them with `ip route replace`
    when missing or different. Salt runs it now; at boot the network stack's
    interface-up hook runs it (ifupdown's if-up.d on Debian,
    NetworkManager's dispatcher.d on RedHat), so the live and the boot-time
    routes come from the same file. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}

hafw-kernel-routes-script:
  file.managed:
    - name: {{ mapdata.routes_script }}
    - source: salt://{{ tplroot }}/files/routes.sh.jinja
    - template: jinja
    - context:
        node: {{ node | json }}
        mapdata: {{ mapdata | json }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: true
{%- for hook in mapdata.route_hooks %}

hafw-kernel-routes-hook-{{ hook.name.split('/') | last }}:
  file.managed:
    - name: {{ hook.name }}
    - source: salt://{{ tplroot }}/files/{{ hook.source }}
    - template: jinja
    - context:
        node: {{ node | json }}
        mapdata: {{ mapdata | json }}
    # NetworkManager runs only root-owned dispatcher scripts that no one
    # else can write
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: true
{%- endfor %}

{#- `stateful`: the script's last line says whether it changed anything, so
    a run with every route in place reports no change; in test mode its
    --check form says what it would install. #}
hafw-kernel-routes-installed:
  cmd.run:
    - name: {{ ((mapdata.routes_script | quote) ~ ' --salt') | json }}
    - stateful:
      - test_name: {{ ((mapdata.routes_script | quote) ~ ' --check --salt') | json }}
    - require:
      - file: hafw-kernel-routes-script

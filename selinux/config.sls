# -*- coding: utf-8 -*-
# vim: ft=sls
{#- The firewall pair's policy module (keepalived_t running the conntrackd
    hook; docs/selinux.md explains every rule), built on the minion from its
    source so that what runs is what was reviewed; and the booleans the role
    needs (load balancers: domain_kernel_load_modules, keepalived loads ip_vs). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}
{%- set base = mapdata.build_dir ~ '/' ~ mapdata.module_name %}

include:
  - {{ tplroot }}.install

{%- if node.selinux.module %}

hafw-selinux-module-source:
  file.managed:
    - name: {{ base }}.te
    - source: salt://{{ tplroot }}/files/{{ mapdata.module_name }}.te
    - makedirs: true
    - mode: '0600'

hafw-selinux-module-built:
  cmd.run:
    - name:
      - checkmodule
      - -M
      - -m
      - -o
      - {{ base }}.mod
      - {{ base }}.te
    - onchanges:
      - file: hafw-selinux-module-source
    - require:
      - pkg: hafw-selinux-tools-installed

hafw-selinux-module-packaged:
  cmd.run:
    - name: [semodule_package, -o, {{ base }}.pp, -m, {{ base }}.mod]
    - onchanges:
      - cmd: hafw-selinux-module-built

{#- a changed module is reinstalled (same name, new content); a missing one
    is installed by the selinux.module state below #}
hafw-selinux-module-upgraded:
  cmd.run:
    - name: [semodule, -i, {{ base }}.pp]
    - onchanges:
      - cmd: hafw-selinux-module-packaged

hafw-selinux-module-installed:
  selinux.module:
    - name: {{ mapdata.module_name }}
    - module_state: Enabled
    - install: true
    - source: {{ base }}.pp
    - require:
      - cmd: hafw-selinux-module-upgraded
{%- endif %}

{%- for name, value in node.selinux.booleans | dictsort %}

hafw-selinux-boolean-{{ name }}:
  selinux.boolean:
    - name: {{ name }}
    - value: {{ value | json }}
    - persist: true
{%- endfor %}

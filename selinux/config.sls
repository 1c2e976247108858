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
    - name: checkmodule -M -m -o {{ (base ~ '.mod') | quote }} {{ (base ~ '.te') | quote }}
    - onchanges:
      - file: hafw-selinux-module-source
    - require:
      - pkg: hafw-selinux-tools-installed

hafw-selinux-module-packaged:
  cmd.run:
    - name: semodule_package -o {{ (base ~ '.pp') | quote }} -m {{ (base ~ '.mod') | quote }}
    - onchanges:
      - cmd: hafw-selinux-module-built

{#- Salt's selinux.module(install=True) reinstalls (and rebuilds the whole
    policy) on every run: install only when the built module changed, or when
    it is missing (removed by hand). #}
hafw-selinux-module-upgraded:
  cmd.run:
    - name: semodule -i {{ (base ~ '.pp') | quote }}
    - onchanges:
      - cmd: hafw-selinux-module-packaged

hafw-selinux-module-present:
  cmd.run:
    - name: semodule -i {{ (base ~ '.pp') | quote }}
    - unless: semodule -l | grep -qw {{ mapdata.module_name | quote }}
    - require:
      - cmd: hafw-selinux-module-upgraded

hafw-selinux-module-enabled:
  selinux.module:
    - name: {{ mapdata.module_name }}
    - module_state: Enabled
    - require:
      - cmd: hafw-selinux-module-present

{%- endif %}

{#- keepalived_t may only execute bin_t files: without this label a script
    keepalived runs has its directory's (etc_t under /etc/conntrackd or
    /etc/keepalived) and never runs. The files are written by the conntrackd
    and keepalived trees after this one; Salt labels files it creates, and
    the applied state relabels an existing one. #}
{%- set paths = {'hook': mapdata.hook_path, 'ipvs-hold': mapdata.ipvs_hold_script} %}
{%- for script in node.selinux.scripts %}

hafw-selinux-{{ script }}-fcontext:
  selinux.fcontext_policy_present:
    - name: {{ paths[script] | regex_escape }}
    - sel_type: bin_t
    - filetype: f

hafw-selinux-{{ script }}-relabelled:
  selinux.fcontext_policy_applied:
    - name: {{ paths[script] | regex_escape }}
    - onlyif: test -e {{ paths[script] }}
    - require:
      - selinux: hafw-selinux-{{ script }}-fcontext
{%- endfor %}

{%- for name, value in node.selinux.booleans | dictsort %}

hafw-selinux-boolean-{{ name }}:
  selinux.boolean:
    - name: {{ name }}
    - value: {{ value | json }}
    - persist: true
{%- endfor %}

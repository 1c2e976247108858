# -*- coding: utf-8 -*-
# vim: ft=sls
{#- Undoes conntrackd: daemon stopped and disabled, the formula's files
    removed, the packages (or the source build's binaries, unit and work
    directory) removed. The hook's log is kept: it is the record of past
    transitions. A source build's libraries under PREFIX/lib stay: other
    software may link against them. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
{%- set src = mapdata.install.source %}
{%- set ctd_bin = src.prefix ~ '/sbin/conntrackd' if mapdata.install.method == 'source' else mapdata.bin %}
{%- set sig = (ctd_bin | regex_escape) ~ '( -d)? -C ' ~ (mapdata.config.path | regex_escape) ~ '( -d)?$' %}
{%- set files = [mapdata.config.path, mapdata.hook.path,
                 salt['file.dirname'](mapdata.hook.state_file),
                 mapdata.tmpfiles_dir ~ '/hafw-conntrackd.conf'] %}
{%- if mapdata.install.method == 'source' %}
{%-   do files.extend([src.unit, src.workdir, src.prefix ~ '/share/hafw/source-build']
                      + (['conntrack', 'conntrackd', 'nfct'] | map('regex_replace', '^', src.prefix ~ '/sbin/') | list)) %}
{%- endif %}

hafw-conntrackd-service-dead:
  service.dead:
    - name: {{ mapdata.service.name }}
    - enable: false
    - sig: {{ sig | json }}

hafw-conntrackd-files-absent:
  file.absent:
    - names: {{ files | json }}
    - require:
      - service: hafw-conntrackd-service-dead
{%- if mapdata.install.method != 'source' %}

hafw-conntrackd-pkgs-removed:
  pkg.removed:
    - pkgs: {{ mapdata.pkgs | json }}
    - require:
      - service: hafw-conntrackd-service-dead
{%- endif %}

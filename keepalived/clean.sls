# -*- coding: utf-8 -*-
# vim: ft=sls
{#- Undoes keepalived/init.sls: service stopped and disabled (the VIPs go
    with it), files removed, packages removed. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}
{%- set packages = mapdata.packages + (mapdata.lvs_packages if node.get('lvs') else []) %}

hafw-keepalived-dead:
  service.dead:
    - name: {{ mapdata.service.name }}
    - enable: false
{%- if mapdata.service.get('sig') %}
    - sig: {{ mapdata.service.sig | json }}
{%- endif %}

hafw-keepalived-config-absent:
  file.absent:
    - names:
      - {{ mapdata.config }}
      - {{ mapdata.ipvs_hold.script }}
      - {{ mapdata.ipvs_hold.marker }}
    - require:
      - service: hafw-keepalived-dead

hafw-keepalived-fifo-dir-at-boot-absent:
  file.absent:
    - name: {{ mapdata.tmpfiles }}

{#- file.absent skips a FIFO (neither a regular file nor a directory);
    file.remove deletes any kind of entry. The directory may be shared
    (/run), so only the FIFO goes; keepalived itself removes it on a clean
    stop, hence the onlyif. #}
hafw-keepalived-fifo-absent:
  module.run:
    - file.remove:
      - path: {{ mapdata.notify_fifo | json }}
    - onlyif:
      - fun: file.is_fifo
        name: {{ mapdata.notify_fifo | json }}
    - require:
      - service: hafw-keepalived-dead

hafw-keepalived-removed:
  pkg.removed:
    - pkgs: {{ packages | json }}
    - require:
      - file: hafw-keepalived-config-absent

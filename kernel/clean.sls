# -*- coding: utf-8 -*-
# vim: ft=sls
{#- Removes hafw's kernel files: sysctl.d and modules-load.d entries, the
    route script and its hooks. Live values are left as they are: turning
    ip_forward off or deleting routes on a running router cuts traffic; the
    next boot starts without them. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}

hafw-kernel-files-absent:
  file.absent:
    - names:
      - {{ mapdata.sysctl_file }}
      - {{ mapdata.modules_file }}
      - {{ mapdata.routes_script }}
{%- for hook in mapdata.route_hooks %}
      - {{ hook.name }}
{%- endfor %}

# -*- coding: utf-8 -*-
# vim: ft=sls
{#- Kernel modules: node.kernel.modules (ip_vs and its scheduler on load
    balancers) plus the modules providing the node's sysctls
    (mapdata.sysctl_modules: nf_conntrack for nf_conntrack_max). Listed in
    modules-load.d for the boot, and loaded now with kmod.present. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}
{%- from tplroot ~ "/modules.jinja" import modules, missing, loadable with context %}

hafw-kernel-modules-file:
  file.managed:
    - name: {{ mapdata.modules_file }}
    - source: salt://{{ tplroot }}/files/modules-load.conf.jinja
    - template: jinja
    - context:
        node: {{ node | json }}
        mapdata: {{ mapdata | json }}
        modules: {{ modules | json }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: true

{%- if not missing %}

hafw-kernel-modules-loaded:
  test.succeed_without_changes:
    - comment: {{ ("kernel modules already in the kernel (loaded or built in): "
                   ~ (modules | join(', ') if modules else 'none needed')) | json }}
{%- elif loadable %}

{#- fails, naming it, for a module the kernel's module tree does not have #}
hafw-kernel-modules-loaded:
  kmod.present:
    - name: {{ missing | join(',') }}
    - mods: {{ missing | json }}
    {#- the conntrack execution module loads only once nf_conntrack is in the
        kernel: reload the modules so that hafw.consistent finds it #}
    - reload_modules: true
{%- else %}

hafw-kernel-modules-loaded:
  test.show_notification:
    - text: {{ ("kernel modules cannot be loaded here (no modprobe, or no module tree for "
                ~ "the running kernel: a container or namespace): not loading "
                ~ missing | join(', ') ~ " now; " ~ mapdata.modules_file
                ~ " loads them at the next boot") | json }}
{%- endif %}

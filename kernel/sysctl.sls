# -*- coding: utf-8 -*-
# vim: ft=sls
{#- node.kernel.sysctl: persisted in sysctl.d (applied at boot) and set live
    with hafw_sysctl.present, which tolerates a sysctl that is read-only
    here (nf_conntrack_max in a network namespace) when its live value
    already satisfies the request, and fails clearly when it does not.
    A sysctl that exists only once a module is loaded (the load balancers'
    net.ipv4.vs.*: ip_vs) is set after modules.sls loaded it; where modules
    cannot be loaded, a notification says so and the boot applies it. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}
{%- from tplroot ~ "/modules.jinja" import missing, loadable with context %}

include:
  - {{ tplroot }}.modules

hafw-kernel-sysctl-file:
  file.managed:
    - name: {{ mapdata.sysctl_file }}
    - source: salt://{{ tplroot }}/files/sysctl.conf.jinja
    - template: jinja
    - context:
        node: {{ node | json }}
        mapdata: {{ mapdata | json }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: true
{%- for key, value in node.kernel.sysctl | dictsort %}
{%-   set module = mapdata.sysctl_modules.get(key) %}
{%-   if module in missing and not loadable %}

{#- its module cannot be loaded here (modules.sls says why): the sysctl does
    not exist; the boot loads the module, then applies the file #}
hafw-kernel-sysctl-{{ key }}:
  test.show_notification:
    - text: {{ (key ~ " is not set now: it exists once kernel module " ~ module ~ " is loaded, "
                ~ "which cannot be done here; " ~ mapdata.sysctl_file ~ " sets it to " ~ value
                ~ " at the next boot") | json }}
{%-   else %}

hafw-kernel-sysctl-{{ key }}:
  hafw_sysctl.present:
    - name: {{ key }}
    - value: {{ value | json }}
    - require:
      - hafw-kernel-modules-loaded
{%-   endif %}
{%- endfor %}

# -*- coding: utf-8 -*-
# vim: ft=sls
{#- The tools of node.firewall.backend; firewalld (and any other service
    that would rewrite the ruleset behind our back) stopped and masked, as in
    the seed. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}

{%- if node.firewall %}
{%- set conf = mapdata[node.firewall.backend] %}

{#- masked, not only disabled: a package update or a dependency must not
    start it again. service.dead succeeds when the service is absent. #}
{%- for service in mapdata.conflicting_services %}

hafw-iptables-{{ service }}-dead:
  service.dead:
    - name: {{ service }}
    - enable: false

hafw-iptables-{{ service }}-masked:
  service.masked:
    - name: {{ service }}
    - require:
      - service: hafw-iptables-{{ service }}-dead
    - require_in:
      - pkg: hafw-iptables-installed
{%- endfor %}

{#- debconf answers matter only to a package's first install: preseed the
    packages not installed yet (and only then pull in debconf-utils, which
    Salt's debconf module needs). #}
{%- set preseed = {} %}
{%- for package, answers in conf.get('debconf', {}) | dictsort %}
{%-   if not salt['pkg.version'](package) %}
{%-     do preseed.update({package: answers}) %}
{%-   endif %}
{%- endfor %}
{%- if preseed %}

hafw-iptables-debconf-tools-installed:
  pkg.installed:
    - pkgs: {{ conf.debconf_packages | json }}
    # load the debconf state module, which needs these tools, right away
    - reload_modules: true
{%-   for package, answers in preseed | dictsort %}

hafw-iptables-debconf-{{ package }}:
  debconf.set:
    - name: {{ package }}
    - data: {{ answers | json }}
    - require:
      - pkg: hafw-iptables-debconf-tools-installed
    - require_in:
      - pkg: hafw-iptables-installed
{%-   endfor %}
{%- endif %}

hafw-iptables-installed:
  pkg.installed:
    - pkgs: {{ conf.packages | json }}
{%- else %}

hafw-iptables-install-not-managed:
  test.show_notification:
    - text: {{ (node.id ~ " has no firewall: nothing to install") | json }}
{%- endif %}

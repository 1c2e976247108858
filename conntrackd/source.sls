# -*- coding: utf-8 -*-
# vim: ft=sls
{#- conntrack-tools built from the release tarballs listed in the pillar
    hafw:lookup:conntrackd:install:source:tarballs ([{name, version, url,
    sha256}]), as the seed did on CentOS 7.1. Salt downloads each tarball and
    checks its sha256 (source_hash) before it is written; the build script
    (files/build-from-source.sh.jinja) checks them again before extracting,
    builds the libraries first, installs into the prefix and prints Salt's
    `stateful` line. The daemon is then PREFIX/sbin/conntrackd. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
{%- set src = mapdata.install.source %}
{%- set script = src.workdir ~ '/build-from-source.sh' %}
{#- the build script leaves one stamp per tarball it built; with the binary,
    they tell Salt that this exact list is installed (a new version is a new
    stamp name, so a pillar change triggers a build) #}
{%- set creates = [src.prefix ~ '/sbin/conntrackd'] %}
{%- set tarballs = [] %}
{%- for t in src.tarballs %}
{%-   for key in ('name', 'version', 'url', 'sha256') %}
{%-     if not t.get(key) %}
{{ raise("hafw:lookup:conntrackd:install:source:tarballs:" ~ loop.index0 ~ ": '" ~ key ~ "' is required") }}
{%-     endif %}
{%-   endfor %}
{%-   do tarballs.append({'name': t.name, 'version': t.version, 'url': t.url, 'sha256': t.sha256,
                          'path': src.workdir ~ '/' ~ (t.url.split('/') | last)}) %}
{%-   do creates.append(src.prefix ~ '/share/hafw/source-build/' ~ t.name ~ '-' ~ t.version ~ '.sha256') %}
{%- endfor %}
{%- if not tarballs %}
{{ raise("hafw:lookup:conntrackd:install:method is 'source' but install:source:tarballs is empty") }}
{%- endif %}

hafw-conntrackd-build-pkgs-installed:
  pkg.installed:
    - pkgs: {{ src.build_pkgs | json }}

hafw-conntrackd-source-workdir:
  file.directory:
    - name: {{ src.workdir }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: true
{%- for t in tarballs %}

hafw-conntrackd-source-tarball-{{ t.name }}:
  file.managed:
    - name: {{ t.path | json }}
    - source: {{ t.url | json }}
    - source_hash: {{ t.sha256 | json }}
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - file: hafw-conntrackd-source-workdir
{%- endfor %}

hafw-conntrackd-source-build-script:
  file.managed:
    - name: {{ script }}
    - source: salt://{{ tplroot }}/files/build-from-source.sh.jinja
    - template: jinja
    - user: root
    - group: root
    - mode: '0700'
    - context:
        tarballs: {{ tarballs | json }}
        prefix: {{ src.prefix | json }}
        workdir: {{ src.workdir | json }}
    - require:
      - file: hafw-conntrackd-source-workdir

{#- one string of shell-quoted words: see service.sls #}
hafw-conntrackd-source-built:
  cmd.run:
    - name: {{ ['/bin/bash', script] | map('quote') | join(' ') | json }}
    - stateful: true
    - creates: {{ creates | json }}
    - require:
      - pkg: hafw-conntrackd-build-pkgs-installed
      - file: hafw-conntrackd-source-build-script
{%- for t in tarballs %}
      - file: hafw-conntrackd-source-tarball-{{ t.name }}
{%- endfor %}

{#- No distribution unit comes with a source build. Type=simple: the build
    may lack systemd support (libsystemd-dev), so no sd_notify; conntrackd in
    the foreground. A crash leaves the lock file behind, which would keep the
    daemon from starting again: systemd runs one instance, so removing it
    before a start is safe. #}
hafw-conntrackd-source-unit:
  file.managed:
    - name: {{ src.unit }}
    - user: root
    - group: root
    - mode: '0644'
    - contents: |
        # Managed by Salt (hafw formula): conntrackd built from source.
        [Unit]
        Description=conntrackd (conntrack-tools built from source by hafw)
        Documentation=man:conntrackd(8) man:conntrackd.conf(5)
        After=network-online.target
        Wants=network-online.target

        [Service]
        Type=simple
        ExecStartPre=-/bin/rm -f {{ mapdata.config.lock_file }}
        ExecStart={{ src.prefix }}/sbin/conntrackd -C {{ mapdata.config.path }}
        Restart=on-failure

        [Install]
        WantedBy=multi-user.target
    - require:
      - cmd: hafw-conntrackd-source-built

# An agent configuration: every field is optional (tend agent runs with none).
#   tend agent --config examples/agent.hcl
data_dir      = "/var/lib/tend"
run_dir       = "/run/tend"
log_level     = "info"
log_format    = "json"
cgroup_parent = "tend"
env_allowlist = ["PATH", "LANG"]

ports {
  min = 20000
  max = 32000
}

plugin "raw_exec" {
  enabled = true
}

# An exec task runs as nobody by default; user = "root" is refused at submit
# unless allowed here (root in its root still owns every file bound in).
plugin "exec" {
  allow_root = false
}

# What a docker task may ask of the host; each is refused at submit unless
# allowed here.
plugin "docker" {
  endpoint           = "/var/run/docker.sock"
  allow_privileged   = false
  allow_host_network = false # network_mode = "host"
  allow_host_binds   = false # volumes with an absolute source
  allow_devices      = false # devices
  allowed_caps       = []    # what cap_add may name, such as "NET_ADMIN"
}

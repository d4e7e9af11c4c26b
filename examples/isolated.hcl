# The exec driver: a cgroup with limits, a chroot of read-only host dirs, and
# the user nobody. Needs root (or a setuid tend-spawn: docs/setuid.md).
#   sudo target/release/tend run examples/isolated.hcl
job "isolated" {
  group "g" {
    task "whoami" {
      driver = "exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "id; grep -E '^(Uid|Gid|Groups|CapEff|NoNewPrivs)' /proc/self/status; echo hello > /local/hello; ls -l /local; cat /proc/self/cgroup | grep memory"]
      }
      resources {
        cpu    = 200
        memory = 64
      }
    }
  }
}

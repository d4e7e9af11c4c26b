# A web server with health checks: tend run examples/checks.hcl, then
# tend status ALLOC shows each check's state; tend events, each change.
job "checked" {
  group "g" {
    restart {
      attempts = 2
      interval = "10m"
      delay    = "5s"
      mode     = "fail"
    }
    task "web" {
      driver = "exec"
      config {
        command = "/usr/bin/python3"
        args    = ["-m", "http.server", "--bind", "127.0.0.1", "${TEND_PORT_http}"]
      }
      resources {
        memory = 64
        network {
          port "http" {}
        }
      }
      service {
        name = "web"
        port = "http"
        check {
          name     = "alive"
          type     = "tcp"
          interval = "5s"
          timeout  = "1s"
        }
        check {
          name     = "index"
          type     = "http"
          path     = "/"
          interval = "10s"
          timeout  = "2s"
          # Three failed looks in a row past the first 10s: restart it.
          check_restart {
            limit = 3
            grace = "10s"
          }
        }
      }
      check {
        name     = "inside"
        type     = "script"
        command  = "/bin/sh"
        args     = ["-c", "echo serving from $(pwd) as $(id -un)"]
        interval = "30s"
        timeout  = "2s"
      }
    }
  }
}

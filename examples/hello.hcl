# A first job: runs without isolation, prints a line and exits 3.
# Run it with: cargo build --release && target/release/tend run examples/hello.hcl
job "hello" {
  group "g" {
    task "greet" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo hello from $TEND_TASK_NAME; echo $GREETING >&2; exit 3"]
      }
      env { GREETING = "hi" }
      kill_timeout = "5s"
      logs {
        max_files     = 10
        max_file_size = 10 # MB
      }
    }
  }
}

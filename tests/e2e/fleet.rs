//! Three `cinder serve` replicas behind nginx (least connections; on a connection error or
//! a 503 the request goes to the next replica), with the OpenAI client at a steady load
//! (`steady_load.py`): a rolling restart (SIGTERM a replica, start it again once it has
//! drained and exited, the next once it listens) loses no request; `kill -9` of a replica
//! loses at most the requests in flight on it, and the others keep serving. (nginx re-sends
//! a request whose replica died before its response started, `non_idempotent`: the
//! client's non-streamed completions lost on the killed replica are re-run elsewhere.)

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::serve::{Server, python, tiny_model};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// nginx in front of `replicas`' ports, on its own port; stopped when dropped.
struct Balancer {
    child: Child,
    port: u16,
}

impl Balancer {
    fn start(dir: &Path, replicas: &[u16]) -> Balancer {
        let port = free_port();
        let servers: String = replicas.iter().map(|p| format!("    server 127.0.0.1:{p} max_fails=0;\n")).collect();
        let d = dir.display();
        let config = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  \
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
             scgi_temp_path {d}/scgi;\n  upstream cinder {{\n    least_conn;\n{servers}  }}\n  server {{\n    listen 127.0.0.1:{port};\n    \
             location / {{\n      proxy_pass http://cinder;\n      proxy_http_version 1.1;\n      proxy_buffering off;\n      \
             proxy_read_timeout 120s;\n      proxy_next_upstream error timeout http_502 http_503 non_idempotent;\n      \
             proxy_next_upstream_tries 3;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"].into_iter().find(|n| Command::new(n).arg("-v").output().is_ok()).expect("nginx (scripts/setup.sh installs it)");
        let child = Command::new(nginx).arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(dir).stderr(Stdio::null()).spawn().unwrap();
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "nginx did not listen: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(50));
        }
        Balancer { child, port }
    }
}

impl Drop for Balancer {
    /// SIGTERM: nginx's fast shutdown stops its worker too (a SIGKILL would leave it).
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// The client's load through the balancer, until `stop` is called.
struct Load {
    child: Child,
    stop: PathBuf,
}

impl Load {
    fn start(dir: &Path, phase: &str, port: u16) -> Load {
        let stop = dir.join(format!("stop-{phase}"));
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/steady_load.py");
        let child = Command::new(python())
            .arg(script)
            .args([&format!("http://127.0.0.1:{port}/v1"), "tiny", "3"])
            .arg(&stop)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Load { child, stop }
    }

    /// Its counts: requests, failed, and the failures' errors.
    fn stop(self) -> serde_json::Value {
        std::fs::write(&self.stop, "").unwrap();
        let out = self.child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
    }
}

#[test]
fn replicas_behind_nginx_roll_without_losing_a_request_and_survive_a_kill() {
    let model = tiny_model("fleet");
    let dir = crate::scratch_dir("fleet");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let flags = ["--device", "cpu", "--drain-grace", "1", "--drain-timeout", "30"];
    let mut replicas: Vec<Server> = ports.iter().map(|&p| Server::start_on(&model, p, &flags)).collect();
    let balancer = Balancer::start(&dir, &ports);

    // A rolling restart under load.
    let load = Load::start(&dir, "rolling", balancer.port);
    std::thread::sleep(Duration::from_secs(2));
    for (i, &port) in ports.iter().enumerate() {
        let pid = replicas[i].child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = replicas[i].child.wait().unwrap();
        assert!(status.success(), "replica {i} exited with {status}");
        replicas[i] = Server::start_on(&model, port, &flags);
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(1));
    let rolling = load.stop();
    eprintln!("rolling restart of 3 replicas: {rolling}");
    assert!(rolling["requests"].as_u64().unwrap() >= 30, "{rolling}");
    assert_eq!(rolling["failed"], 0, "requests lost in a rolling restart: {rolling}");

    // kill -9: only what was in flight on that replica fails (at most one per client
    // worker), and the others keep serving.
    let load = Load::start(&dir, "kill", balancer.port);
    std::thread::sleep(Duration::from_secs(2));
    replicas[0].child.kill().unwrap();
    replicas[0].child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let killed = load.stop();
    eprintln!("kill -9 of 1 of 3 replicas: {killed}");
    assert!(killed["failed"].as_u64().unwrap() <= 3, "more failed than were in flight: {killed}");
    assert!(killed["requests"].as_u64().unwrap() - killed["failed"].as_u64().unwrap() >= 30, "{killed}");
}

//! tcp-echo: answers each `\n`-terminated line with `"<prefix> <line>"` and keeps the connection
//! open until EOF.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::{AppEnv, LogSink};

/// Serves raw TCP on `listener`. `args[1]` is the prefix (default `hello`); `args[0]` lists
/// the ports, which the caller has already bound one listener each for.
pub(crate) async fn serve(env: AppEnv, port: u16, listener: TcpListener) -> std::io::Result<()> {
    let prefix = env.args.get(1).cloned().unwrap_or_else(|| "hello".to_string());
    (env.log)(&format!("listening on [::]:{port}, prefix: {prefix}"));
    // Connection tasks live in the JoinSet, so dropping this future closes them too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => {
                    conns.spawn(echo(sock, prefix.clone(), env.log.clone()));
                }
                Err(e) => {
                    // Transient (e.g. out of file descriptors): keep serving.
                    (env.log)(&format!("accept error: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn echo(sock: TcpStream, prefix: String, log: LogSink) {
    let (read, mut write) = sock.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            // A last line without '\n' is dropped at EOF, like the original's ReadString.
            Ok(0) | Err(_) => return,
            Ok(_) if line.last() != Some(&b'\n') => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        log(&format!("request: {}", text.trim_end_matches('\n')));
        let mut reply = Vec::with_capacity(prefix.len() + 1 + line.len());
        reply.extend_from_slice(prefix.as_bytes());
        reply.push(b' ');
        reply.extend_from_slice(&line);
        log(&format!("response: {} {}", prefix, text.trim_end_matches('\n')));
        if write.write_all(&reply).await.is_err() {
            return;
        }
    }
}

//! TCP helpers run inside a namespace's worker.

use std::io;
use std::net::SocketAddrV4;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::lab::Worker;

/// Listens on 0.0.0.0:`port` in the worker's namespace and greets every connection with
/// `greeting` and a newline, then keeps it open and silent until the worker ends.
pub fn serve(worker: &Worker, port: u16, greeting: &'static str) {
    worker.run(move || async move {
        let listener = TcpListener::bind(("0.0.0.0", port)).await.expect("bind");
        tokio::task::spawn_local(async move {
            let mut open = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(format!("{greeting}\n").as_bytes()).await;
                open.push(stream);
            }
        });
    });
}

/// Connects to `to` within `timeout` and reads the greeting.
pub async fn greeting(to: SocketAddrV4, timeout: Duration) -> io::Result<String> {
    let mut stream = connect(to, timeout).await?;
    let line = read_line(&mut stream, timeout).await?;
    Ok(line)
}

pub async fn connect(to: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    tokio::time::timeout(timeout, TcpStream::connect(to))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no answer from {to} in {timeout:?}")))?
}

pub async fn read_line(stream: &mut TcpStream, timeout: Duration) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(timeout, stream.read(&mut byte))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if n == 0 || byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
    }
}

//! Framing, envelope encoding, handshake and the shared writer task.

use std::io;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use crate::{FRAME_BYTES_MAX, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION, RpcError};

/// Buffer size of the reader and of the writer of a connection.
pub(crate) const IO_BUFFER_BYTES: usize = 64 * 1024;

/// What one frame carries. `Hello` must keep its encoding in every protocol version.
#[derive(Serialize, Deserialize)]
pub(crate) enum Envelope<Q, R, P> {
    Hello { version: u16 },
    Request { id: u64, body: Q },
    Response { id: u64, body: R },
    Push { body: P },
}

/// An encoded frame (length prefix included) queued for the writer task. The permit, if any, is
/// released once the frame has been handed to the socket buffer: it bounds the queue.
pub(crate) struct Outgoing {
    pub frame: Vec<u8>,
    pub _permit: Option<OwnedSemaphorePermit>,
}

/// Encodes an envelope as a complete frame: 4-byte big-endian length, then the MessagePack payload.
pub(crate) fn encode<Q: Serialize, R: Serialize, P: Serialize>(
    env: &Envelope<Q, R, P>,
) -> Result<Vec<u8>, RpcError> {
    let mut buf = vec![0u8; 4];
    rmp_serde::encode::write_named(&mut buf, env).map_err(|e| RpcError::Encode(e.to_string()))?;
    let len = buf.len() - 4;
    let prefix = u32::try_from(len)
        .ok()
        .filter(|_| len <= FRAME_BYTES_MAX)
        .ok_or(RpcError::TooLarge { len, max: FRAME_BYTES_MAX })?;
    buf[..4].copy_from_slice(&prefix.to_be_bytes());
    Ok(buf)
}

pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, RpcError> {
    rmp_serde::from_slice(payload).map_err(|e| RpcError::Protocol(format!("malformed frame: {e}")))
}

/// Reads one frame payload; `Ok(None)` on a clean end of stream (at a frame boundary).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> Result<Option<Vec<u8>>, RpcError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        let n = rd.read(&mut prefix[got..]).await?;
        if n == 0 {
            return match got {
                0 => Ok(None),
                _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(RpcError::TooLarge { len, max: FRAME_BYTES_MAX });
    }
    // Grow with the data actually received rather than trusting the announced length up front.
    let mut payload = Vec::with_capacity(len.min(IO_BUFFER_BYTES));
    (&mut *rd).take(len as u64).read_to_end(&mut payload).await?;
    if payload.len() != len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some(payload))
}

/// Exchanges `Hello` frames (both sides send first, then read) and checks the peer's version.
pub(crate) async fn handshake<R, W>(rd: &mut R, wr: &mut W) -> Result<(), RpcError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = encode(&Envelope::<(), (), ()>::Hello { version: PROTOCOL_VERSION })?;
    let send = async {
        wr.write_all(&hello).await?;
        wr.flush().await?;
        Ok::<(), RpcError>(())
    };
    let receive = async {
        let frame = read_frame(rd).await?.ok_or(RpcError::Closed)?;
        match decode::<Envelope<IgnoredAny, IgnoredAny, IgnoredAny>>(&frame)? {
            Envelope::Hello { version } if version == PROTOCOL_VERSION => Ok(()),
            Envelope::Hello { version } => {
                Err(RpcError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: version })
            }
            _ => Err(RpcError::Protocol("first frame is not Hello".into())),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async { tokio::try_join!(send, receive) })
        .await
        .map_err(|_| RpcError::Timeout)?
        .map(|_| ())
}

/// Resolves once `closed` is true (or its senders are gone).
pub(crate) async fn wait_closed(closed: &mut watch::Receiver<bool>) {
    let _ = closed.wait_for(|&c| c).await;
}

/// Spawns the task writing queued frames in order. Frames queued together are batched into one
/// buffered write and flushed when the queue is empty. The task ends when every sender is dropped,
/// when `closed` becomes true, or on a write error; it then sets `closed`.
pub(crate) fn spawn_writer<W>(
    wr: W,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    closed: watch::Sender<bool>,
) where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let mut closed_rx = closed.subscribe();
    tokio::spawn(async move {
        let result = tokio::select! {
            r = write_frames(wr, &mut queue) => r,
            () = wait_closed(&mut closed_rx) => Ok(()),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "rpc write failed");
        }
        closed.send_replace(true);
    });
}

async fn write_frames<W: AsyncWrite + Unpin>(
    wr: W,
    queue: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> io::Result<()> {
    let mut wr = BufWriter::with_capacity(IO_BUFFER_BYTES, wr);
    while let Some(first) = queue.recv().await {
        wr.write_all(&first.frame).await?;
        drop(first);
        while let Ok(next) = queue.try_recv() {
            wr.write_all(&next.frame).await?;
        }
        wr.flush().await?;
    }
    Ok(())
}

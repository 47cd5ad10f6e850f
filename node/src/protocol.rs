//! The daemon ↔ worker protocol: length-prefixed JSON frames over a Unix socket.
//!
//! The socket carries only control messages; the user's stdout and stderr go
//! to the worker's own fds 1 and 2, which the daemon reads as the call's logs.

use serde::{Deserialize, Serialize};

/// Largest frame accepted (arguments and results travel in frames).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Worker → daemon, once, after the interpreter is up.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ready {
    pub pid: u32,
    pub python: String,
}

/// Daemon → worker: run one call.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallRequest {
    pub module: String,
    pub qualname: String,
    /// JSON text of the positional arguments (an array).
    pub args: String,
    /// JSON text of the keyword arguments (an object).
    pub kwargs: String,
}

/// Worker → daemon: how the call ended.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CallResponse {
    /// `result` is the JSON text of the return value.
    Returned { result: String },
    /// The call failed; the fields follow `wire::DispatchFailure`.
    Failed { code: String, message: String, remote_type: Option<String>, traceback: Option<String> },
}

/// Writes one frame to a blocking writer.
pub fn write_frame<W: std::io::Write, T: Serialize>(writer: &mut W, value: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    writer.write_all(&(body.len() as u32).to_be_bytes())?;
    writer.write_all(&body)?;
    writer.flush()
}

/// Reads one frame from a blocking reader; `None` at a clean end of stream.
pub fn read_frame<R: std::io::Read, T: for<'de> Deserialize<'de>>(reader: &mut R) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes exceeds the limit")));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    serde_json::from_slice(&body).map(Some).map_err(std::io::Error::other)
}

/// Writes one frame to an async writer.
pub async fn write_frame_async<W, T>(writer: &mut W, value: &T) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
    T: Serialize,
{
    use tokio::io::AsyncWriteExt;
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Reads one frame from an async reader; `None` at a clean end of stream.
pub async fn read_frame_async<R, T>(reader: &mut R) -> std::io::Result<Option<T>>
where
    R: tokio::io::AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes exceeds the limit")));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map(Some).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_a_closed_stream_reads_as_none() {
        let mut buffer = Vec::new();
        let sent = CallRequest { module: "m".into(), qualname: "f".into(), args: "[1]".into(), kwargs: "{}".into() };
        write_frame(&mut buffer, &sent).unwrap();
        let mut reader = std::io::Cursor::new(buffer);
        let got: CallRequest = read_frame(&mut reader).unwrap().unwrap();
        assert_eq!((got.module, got.qualname, got.args), ("m".into(), "f".into(), "[1]".into()));
        assert!(read_frame::<_, CallRequest>(&mut reader).unwrap().is_none());
    }
}

//! The request-response codec shared by `/dwarfstar/caps/1` (a prost `Capabilities` each way)
//! and `/dwarfstar/ctl/1` (opaque bytes the node runtime defines): the message is the whole
//! stream, read to its end with a size limit.

use std::io;

use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

pub(crate) const CAPS_PROTOCOL: StreamProtocol = StreamProtocol::new("/dwarfstar/caps/1");
pub(crate) const CTL_PROTOCOL: StreamProtocol = StreamProtocol::new("/dwarfstar/ctl/1");
pub(crate) const IDENTIFY_PROTOCOL: &str = "/dwarfstar/id/1";

/// Largest capabilities message.
pub(crate) const MAX_CAPS: usize = 1 << 20;
/// Largest control request or response.
pub const MAX_CONTROL: usize = 16 << 20;

/// Length-delimited-by-EOF bytes with a size cap.
#[derive(Clone, Debug)]
pub(crate) struct BytesCodec {
    max: usize,
}

impl BytesCodec {
    pub(crate) fn new(max: usize) -> Self {
        BytesCodec { max }
    }
}

async fn read_capped<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message over {max} bytes"),
        ));
    }
    Ok(buf)
}

async fn write_capped<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    max: usize,
    data: Vec<u8>,
) -> io::Result<()> {
    if data.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message over {max} bytes"),
        ));
    }
    io.write_all(&data).await
}

impl libp2p::request_response::Codec for BytesCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io, self.max).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io, self.max).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_capped(io, self.max, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_capped(io, self.max, res).await
    }
}

//! A gRPC codec that sends bytes as they are and hands back the reply's bytes.
//!
//! A dtm branch payload is the protobuf encoding of the branch method's
//! request message, produced by the client SDK. Whoever calls the branch —
//! the coordinator with a stored payload, an AP with its TCC try — does not
//! know the message type, so it must not decode or re-encode it: it sends
//! the bytes verbatim as the message body (dtm's `dtm_raw` codec,
//! `dtmgrpc/dtmgimp/grpc_raw.go`). The reply message comes back as bytes
//! too: the coordinator ignores it (only the gRPC status matters), an AP
//! may decode it with the type it knows.

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Encodes `Bytes` verbatim, decodes any reply to its `Bytes`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

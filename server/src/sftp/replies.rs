//! Hands SFTP replies to the SSH channel as owned bytes, so that most of a download is not
//! copied on its way out: replies that fill whole SSH packets go as they are, small ones are
//! gathered into batches first (the packets they make stay full).
//!
//! russh's `AsyncWrite` channel writer copies every byte into a message of its own, and a
//! `BufWriter` in front of it copied each reply once more; owned `Bytes` reach russh's packet
//! writer without either copy (`Channel::data_bytes`).

use bytes::Bytes;

use super::codec::REPLY_SLACK;

/// OpenSSH's SSH channel packet size (`CHAN_SES_PACKET_DEFAULT`). A reply whose length is a
/// multiple of it splits into full packets only, so it goes out without being batched.
pub const SSH_PACKET: usize = 32 * 1024;
/// Replies gathered before they are sent (as the `BufWriter` before).
pub const BATCH: usize = 256 * 1024;

/// Where replies go: the SSH channel, or a recorder in tests.
pub trait Sink {
    /// Sends `data` on, in order; an error means the channel is gone.
    fn send(&mut self, data: Bytes) -> impl Future<Output = Result<(), ()>> + Send;
    /// Tells the client no more replies follow (SSH: EOF on the channel).
    fn close(self) -> impl Future<Output = ()> + Send;
}

impl<S> Sink for russh::ChannelWriteHalf<S>
where
    S: From<(russh::ChannelId, russh::ChannelMsg)> + Send + Sync + 'static,
{
    async fn send(&mut self, data: Bytes) -> Result<(), ()> {
        self.data_bytes(data).await.map_err(drop)
    }

    async fn close(self) {
        let _ = self.eof().await;
    }
}

/// Replies to a plain byte stream (`session::run_stream`).
pub struct StreamSink<W>(pub W);

impl<W> Sink for StreamSink<W>
where
    W: tokio::io::AsyncWrite + Unpin + Send,
{
    async fn send(&mut self, data: Bytes) -> Result<(), ()> {
        use tokio::io::AsyncWriteExt;
        self.0.write_all(&data).await.map_err(drop)?;
        self.0.flush().await.map_err(drop)
    }

    async fn close(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.0.shutdown().await;
    }
}

/// Gathers small replies and passes whole-packet ones straight on.
pub struct ReplyWriter<K> {
    sink: K,
    batch: Vec<u8>,
}

impl<K: Sink> ReplyWriter<K> {
    pub fn new(sink: K) -> Self {
        Self {
            sink,
            batch: Vec::new(),
        }
    }

    /// Sends `reply` now if it fills whole packets (after what is batched), else adds it to
    /// the batch, which goes when it is full. `more_queued` says another reply is waiting:
    /// without one the batch is sent too, so no reply waits for a later one.
    pub async fn write(&mut self, reply: Vec<u8>, more_queued: bool) -> Result<(), ()> {
        if reply.len().is_multiple_of(SSH_PACKET) && reply.capacity() - reply.len() <= REPLY_SLACK {
            self.flush().await?;
            return self.sink.send(Bytes::from(reply)).await;
        }
        if self.batch.is_empty() && more_queued {
            // Likely to fill: room for a whole batch now, instead of growing (and copying) it.
            self.batch.reserve(BATCH + reply.len());
        }
        self.batch.extend_from_slice(&reply);
        if self.batch.len() >= BATCH || !more_queued {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what is batched. A batch that fills its buffer (all but a quarter, or [`REPLY_SLACK`])
    /// is handed over as it is; a smaller one is copied out and the buffer kept, so that a few
    /// bytes waiting in the channel's queue never hold a whole batch buffer (the reply budget
    /// counts lengths, not memory).
    pub async fn flush(&mut self) -> Result<(), ()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let unused = self.batch.capacity() - self.batch.len();
        let data = if unused <= REPLY_SLACK.max(self.batch.len() / 4) {
            Bytes::from(std::mem::take(&mut self.batch))
        } else {
            let data = Bytes::copy_from_slice(&self.batch);
            self.batch.clear();
            data
        };
        self.sink.send(data).await
    }

    pub fn into_sink(self) -> K {
        self.sink
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what was sent, as the channel would see it.
    #[derive(Default)]
    struct Recorder(Vec<Bytes>);

    impl Sink for Recorder {
        async fn send(&mut self, data: Bytes) -> Result<(), ()> {
            self.0.push(data);
            Ok(())
        }

        async fn close(self) {}
    }

    fn reply(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[tokio::test]
    async fn replies_arrive_whole_and_in_order_whatever_their_sizes() {
        let sizes = [
            13,
            2 * SSH_PACKET,
            32 * 1024 + 13,
            7,
            SSH_PACKET,
            BATCH - 5,
            BATCH + 1,
            2 * SSH_PACKET,
            1,
        ];
        let replies: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| reply(len, i as u8))
            .collect();
        let mut writer = ReplyWriter::new(Recorder::default());
        for (i, r) in replies.iter().enumerate() {
            writer
                .write(r.clone(), i + 1 < replies.len())
                .await
                .unwrap();
        }
        let sent: Vec<u8> = writer.into_sink().0.concat();
        assert_eq!(sent, replies.concat());
    }

    #[tokio::test]
    async fn a_reply_of_whole_packets_goes_out_as_it_is() {
        let mut writer = ReplyWriter::new(Recorder::default());
        writer.write(reply(100, 1), true).await.unwrap();
        let aligned = reply(2 * SSH_PACKET, 2);
        let at = aligned.as_ptr();
        writer.write(aligned, true).await.unwrap();
        let sent = writer.into_sink().0;
        // The batched reply went first, then the aligned one without a copy.
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].len(), 100);
        assert_eq!(sent[1].as_ptr(), at);
    }

    #[tokio::test]
    async fn small_replies_wait_for_each_other_but_not_for_a_reply_that_is_not_queued() {
        let mut writer = ReplyWriter::new(Recorder::default());
        writer.write(reply(40, 1), true).await.unwrap();
        writer.write(reply(50, 2), true).await.unwrap();
        assert!(
            writer.sink.0.is_empty(),
            "batched while more replies are queued"
        );
        writer.write(reply(60, 3), false).await.unwrap();
        assert_eq!(writer.sink.0.len(), 1);
        assert_eq!(writer.sink.0[0].len(), 150);
    }

    #[tokio::test]
    async fn a_whole_packet_reply_with_much_unused_room_is_copied_not_handed_over() {
        let mut writer = ReplyWriter::new(Recorder::default());
        // A NAME reply grown by doubling can be 32 KiB long in a 64 KiB buffer.
        let mut roomy = Vec::with_capacity(4 * SSH_PACKET);
        roomy.extend_from_slice(&reply(SSH_PACKET, 3));
        let at = roomy.as_ptr();
        let expected = roomy.clone();
        writer.write(roomy, false).await.unwrap();
        let sent = &writer.sink.0;
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0][..], expected[..]);
        assert_ne!(
            sent[0].as_ptr(),
            at,
            "a 128 KiB buffer must not ride along with 32 KiB"
        );
    }

    #[tokio::test]
    async fn a_small_batch_leaves_as_a_copy_and_the_batch_buffer_stays() {
        let mut writer = ReplyWriter::new(Recorder::default());
        writer.write(reply(13, 1), true).await.unwrap();
        let buffer = writer.batch.as_ptr();
        assert!(writer.batch.capacity() >= BATCH);
        writer.write(reply(2 * SSH_PACKET, 2), true).await.unwrap();
        let sent = &writer.sink.0;
        assert_eq!(sent[0].len(), 13);
        assert_ne!(
            sent[0].as_ptr(),
            buffer,
            "13 bytes must not pin a batch buffer"
        );
        assert_eq!(
            writer.batch.as_ptr(),
            buffer,
            "the buffer is kept for the next batch"
        );
        assert!(writer.batch.is_empty());
    }

    #[tokio::test]
    async fn a_full_batch_is_sent_even_while_replies_keep_coming() {
        let mut writer = ReplyWriter::new(Recorder::default());
        // Eight 32 KiB READ answers (as paramiko asks for) are just over a batch.
        for i in 0..8 {
            writer.write(reply(32 * 1024 + 13, i), true).await.unwrap();
        }
        let sent = &writer.sink.0;
        assert_eq!(sent.len(), 1, "one batch of at least {BATCH} bytes");
        assert!(sent[0].len() >= BATCH);
        assert_eq!(
            writer.batch.capacity(),
            0,
            "a full batch is handed over, not copied"
        );
    }
}

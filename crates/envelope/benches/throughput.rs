//! Envelope throughput with the key in hand: bytes per second sealed and opened, one core.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rkms_envelope::{decrypt, encrypt, Header};

const LEN: usize = 64 * 1024 * 1024;
const KEY: [u8; 32] = [7; 32];

fn throughput(c: &mut Criterion) {
    let plaintext = vec![0x5a_u8; LEN];
    let mut envelope = Vec::with_capacity(LEN + LEN / 1024);
    encrypt(
        &KEY,
        Header::new("bench", 1).unwrap(),
        &plaintext[..],
        &mut envelope,
    )
    .unwrap();
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Bytes(LEN as u64));
    group.sample_size(10);
    group.bench_function("encrypt 64 MiB", |b| {
        let mut out = Vec::with_capacity(envelope.len());
        b.iter(|| {
            out.clear();
            let header = Header::new("bench", 1).unwrap();
            encrypt(&KEY, header, &plaintext[..], &mut out).unwrap()
        });
    });
    group.bench_function("decrypt 64 MiB", |b| {
        let mut out = Vec::with_capacity(LEN);
        b.iter(|| {
            out.clear();
            let mut input = &envelope[..];
            let parsed = Header::read(&mut input).unwrap();
            decrypt(&KEY, &parsed, input, &mut out).unwrap()
        });
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);

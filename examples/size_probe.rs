fn main() {
    println!("Request<u64> {}", std::mem::size_of::<convoy::Request<u64>>());
}

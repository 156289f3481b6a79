// A cooperating process for `uffd snapshot live` and `uffd dirty watch`: offers a memfd range with
// MemoryOffer and writes into it while the tool works; for a live snapshot it keeps its writer
// paused until the tool says `cut`, then checks the tool's file holds every page as at the cut.
//
//   OfferMemoryExample SOCKET live-snapshot|dirty-tracking MIB [SNAPSHOT-FILE]
import Foundation
import Synchronization
import Userfaultfd

let arguments = CommandLine.arguments
guard arguments.count >= 4, let purpose = MemoryOffer.Purpose(rawValue: arguments[2]), let mib = Int(arguments[3]),
      (1...4096).contains(mib)
else {
  print("usage: OfferMemoryExample SOCKET live-snapshot|dirty-tracking MIB(1-4096) [SNAPSHOT-FILE]")
  exit(2)
}
let page = PageSize.base
let memory = try AnonymousMemory.memfd(length: mib << 20)
let pages = memory.length / page
for index in 0..<pages { (memory.baseAddress + index * page).storeBytes(of: UInt64(index), as: UInt64.self) }
let offer = try MemoryOffer(memory: memory, socketPath: arguments[1], purpose: purpose)
defer { offer.close() }
print("offering \(mib) MiB at \(memory.baseAddress) as process \(getpid()) on \(arguments[1])")
guard try offer.handOver(timeout: .seconds(120)) else {
  print("no tool connected within 120 s")
  exit(1)
}
// The writer starts once its writes are seen: at the cut (a point-in-time copy), or once the
// tool is watching.
let expected = purpose == .liveSnapshot ? "cut" : "watching"
guard try offer.waitForTool(timeout: .seconds(60)) == expected else {
  print("the tool did not say \(expected)")
  exit(1)
}
final class Flag: Sendable { let stop = Atomic<Bool>(false); let writes = Atomic<Int>(0) }
let flag = Flag()
let base = UInt(bitPattern: memory.baseAddress)
let writer = Thread {
  var state: UInt64 = 0x9E37_79B9_7F4A_7C15
  while !flag.stop.load(ordering: .relaxed) {
    state ^= state << 13; state ^= state >> 7; state ^= state << 17
    let target = base + UInt(Int(state % UInt64(pages)) * page)
    UnsafeMutableRawPointer(bitPattern: target)?.storeBytes(of: state | 1 << 63, as: UInt64.self)
    if flag.writes.wrappingAdd(1, ordering: .relaxed).newValue & 255 == 0 { usleep(100) }
  }
}
writer.start()
let done = try offer.waitForTool(timeout: .seconds(300))
flag.stop.store(true, ordering: .relaxed)
usleep(10_000)
print("the tool said \(done ?? "nothing"); \(flag.writes.load(ordering: .relaxed)) writes meanwhile")
guard done == "done" else { exit(1) }
if purpose == .liveSnapshot, arguments.count >= 5 {
  guard let data = FileManager.default.contents(atPath: arguments[4]), data.count == memory.length else {
    print("the snapshot file is missing or not \(memory.length) bytes")
    exit(1)
  }
  let wrong = (0..<pages).filter { index in
    data.withUnsafeBytes { $0.load(fromByteOffset: index * page, as: UInt64.self) } != UInt64(index)
  }
  print("snapshot checked: \(pages - wrong.count) of \(pages) pages as at the cut")
  exit(wrong.isEmpty ? 0 : 1)
}

import CUserfaultfdTestSupport
import Foundation
import Testing
@testable import Userfaultfd

/// Opening never downgrades silently: a user-mode-only descriptor (kernel-mode faults fail with
/// EFAULT on it) only when the caller allows it. Checked in a child process that drops its
/// privileges, so nothing on the machine changes.
extension KernelTests {
@Suite("Guarantees: opening")
struct OpeningTests {
  static var unprivilegedUseIsOff: Bool {
    (try? String(contentsOfFile: "/proc/sys/vm/unprivileged_userfaultfd", encoding: .utf8))?
      .trimmingCharacters(in: .whitespacesAndNewlines) == "0" && getuid() == 0
      && access("/dev/userfaultfd", F_OK) == 0
  }

  @Test func rootGetsADescriptorThatHandlesKernelFaults() throws {
    let uffd = try Userfaultfd()
    #expect(uffd.handlesKernelFaults)
    #expect(uffd.openMethod == .syscall)
    guard Kernel.hasUserModeOnly else {
      print("SKIP part: UFFD_USER_MODE_ONLY needs Linux 5.11")
      return
    }
    let explicit = try Userfaultfd(options: .userModeOnly)
    #expect(explicit.openMethod == .syscallUserModeOnly)
    #expect(!explicit.handlesKernelFaults)
  }

  @Test(.enabled(if: OpeningTests.unprivilegedUseIsOff,
                 "needs root, vm.unprivileged_userfaultfd = 0 and /dev/userfaultfd (Linux 6.1) to drop privileges from"))
  func unprivilegedWithoutDeviceAccessFailsUnlessUserModeOnlyIsAllowed() async {
    await #expect(processExitsWith: .success) {
      // nobody, without access to /dev/userfaultfd (mode 0600, root's).
      guard setgid(65534) == 0, setuid(65534) == 0 else { exit(2) }
      do throws(UserfaultfdError) {
        _ = try Userfaultfd()
        exit(3)  // must not silently get a user-mode-only descriptor
      } catch {
        guard case .openFailed(let attempts) = error, attempts.count == 2,
              attempts.allSatisfy({ $0.method != .syscallUserModeOnly }) else { exit(4) }
      }
      guard let downgraded = try? Userfaultfd(options: .allowUserModeOnly),
            downgraded.openMethod == .syscallUserModeOnly, !downgraded.handlesKernelFaults else { exit(5) }
      exit(0)
    }
  }

  @Test func moveVerdictFollowsARTsVersionGate() {
    #expect(MoveVerdict.knownBadReason(release: "6.8.0-31-generic") != nil)
    #expect(MoveVerdict.knownBadReason(release: "6.12.19") != nil)
    #expect(MoveVerdict.knownBadReason(release: "6.12.20-amd64") == nil)
    #expect(MoveVerdict.knownBadReason(release: "6.13.7") != nil)
    #expect(MoveVerdict.knownBadReason(release: "6.13.8") == nil)
    #expect(MoveVerdict.knownBadReason(release: "6.14.0") == nil)
    #expect(MoveVerdict.knownBadReason(release: "6.18.44-fc-v657") == nil)
    #expect(MoveVerdict.knownBadReason(release: "5.10.0-32-cloud-amd64") == nil)
    #expect(MoveVerdict.decide(release: "6.1.0", advertised: false, selfTest: nil) == .absent)
    #expect(MoveVerdict.decide(release: "6.12.1", advertised: true, selfTest: nil, trustOverride: false).name == "known-bad-kernel")
    #expect(MoveVerdict.decide(release: "6.12.1", advertised: true, selfTest: nil, trustOverride: true) == .usable)
    #expect(MoveVerdict.decide(release: "6.18.0", advertised: true, selfTest: .notSupported(.move, "seccomp")).name == "blocked")
    if Kernel.hasMove { #expect(PageMover.moveVerdict == .usable, "this machine's kernel: \(PageMover.moveVerdict)") }
  }
}
}

import Foundation
import Testing
@testable import SnapshotPager

/// AWS Signature Version 4 against AWS's published vectors: the SigV4 test suite (`get-vanilla`,
/// `get-vanilla-query-order-key-case`; credentials `AKIDEXAMPLE`, 2015-08-30, service `service`)
/// and the S3 documentation's header-signing examples (GET with a range, PUT with a payload,
/// ?lifecycle, a listing; credentials `AKIAIOSFODNN7EXAMPLE`, 2013-05-24).
@Suite struct SigV4SignerTests {
  static let suiteSigner = SigV4Signer(
    credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
    region: "us-east-1", service: "service")
  static let s3Signer = SigV4Signer(
    credentials: AWSCredentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    region: "us-east-1", service: "s3")
  static let s3Host = ("host", "examplebucket.s3.amazonaws.com")

  static func signature(of headers: [(String, String)]) -> String? {
    guard let authorization = headers.first(where: { $0.0 == "authorization" })?.1,
          let range = authorization.range(of: "Signature=") else { return nil }
    return String(authorization[range.upperBound...])
  }

  @Test func getVanilla() {
    let date = "20150830T123600Z"
    let headers = [("Host", "example.amazonaws.com")]
    let (canonical, signed) = Self.suiteSigner.canonicalRequest(
      method: "GET", path: "/", query: [], headers: headers + [("X-Amz-Date", date)], payloadHash: SigV4Signer.emptyPayloadHash)
    #expect(canonical == "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\(SigV4Signer.emptyPayloadHash)")
    #expect(signed == "host;x-amz-date")
    let toSign = Self.suiteSigner.stringToSign(canonicalRequest: canonical, date: date)
    #expect(toSign == "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63")
    let added = Self.suiteSigner.signedHeaders(method: "GET", path: "/", headers: headers, payloadHash: SigV4Signer.emptyPayloadHash,
                                               date: date, addContentHash: false)
    #expect(added.first { $0.0 == "authorization" }?.1 == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
  }

  @Test func getVanillaQueryOrderKeyCase() {
    let added = Self.suiteSigner.signedHeaders(
      method: "GET", path: "/", query: [("Param2", "value2"), ("Param1", "value1")], headers: [("Host", "example.amazonaws.com")],
      payloadHash: SigV4Signer.emptyPayloadHash, date: "20150830T123600Z", addContentHash: false)
    #expect(Self.signature(of: added) == "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
  }

  @Test func s3GetObjectWithRange() {
    let date = "20130524T000000Z"
    let (canonical, _) = Self.s3Signer.canonicalRequest(
      method: "GET", path: "/test.txt", query: [],
      headers: [Self.s3Host, ("Range", "bytes=0-9"), ("x-amz-content-sha256", SigV4Signer.emptyPayloadHash), ("x-amz-date", date)],
      payloadHash: SigV4Signer.emptyPayloadHash)
    #expect(Self.s3Signer.stringToSign(canonicalRequest: canonical, date: date).hasSuffix("7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"))
    let added = Self.s3Signer.signedHeaders(method: "GET", path: "/test.txt", headers: [Self.s3Host, ("Range", "bytes=0-9")],
                                            payloadHash: SigV4Signer.emptyPayloadHash, date: date)
    #expect(added.first { $0.0 == "authorization" }?.1 == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
  }

  @Test func s3PutObjectWithPayload() {
    let payload = Array("Welcome to Amazon S3.".utf8)
    let hash = SigV4Signer.payloadHash(payload)
    #expect(hash == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
    let path = "/" + SigV4Signer.encode("test$file.text", slash: false)
    #expect(path == "/test%24file.text")
    let added = Self.s3Signer.signedHeaders(
      method: "PUT", path: path,
      headers: [Self.s3Host, ("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-storage-class", "REDUCED_REDUNDANCY")],
      payloadHash: hash, date: "20130524T000000Z")
    #expect(Self.signature(of: added) == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
  }

  @Test func s3GetBucketLifecycle() {
    let added = Self.s3Signer.signedHeaders(method: "GET", path: "/", query: [("lifecycle", "")], headers: [Self.s3Host],
                                            payloadHash: SigV4Signer.emptyPayloadHash, date: "20130524T000000Z")
    #expect(Self.signature(of: added) == "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
  }

  @Test func s3ListObjects() {
    let added = Self.s3Signer.signedHeaders(method: "GET", path: "/", query: [("max-keys", "2"), ("prefix", "J")], headers: [Self.s3Host],
                                            payloadHash: SigV4Signer.emptyPayloadHash, date: "20130524T000000Z")
    #expect(Self.signature(of: added) == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
  }

  @Test func sessionTokenIsSignedAndSent() {
    var signer = Self.s3Signer
    signer.credentials.sessionToken = "token/with+chars"
    let added = signer.signedHeaders(method: "GET", path: "/k", headers: [Self.s3Host], payloadHash: SigV4Signer.emptyPayloadHash,
                                     date: "20130524T000000Z")
    #expect(added.contains { $0.0 == "x-amz-security-token" && $0.1 == "token/with+chars" })
    #expect(added.first { $0.0 == "authorization" }?.1.contains("x-amz-security-token") == true)
  }

  @Test func timestampsAreUTC() {
    #expect(SigV4Signer.timestamp(1_369_353_600) == "20130524T000000Z")
    #expect(SigV4Signer.timestamp(1_440_938_160) == "20150830T123600Z")
  }

  @Test func encodingKeepsUnreservedOnly() {
    #expect(SigV4Signer.encode("a b/c~d_e.f-g", slash: true) == "a%20b%2Fc~d_e.f-g")
    #expect(SigV4Signer.encode("a b/c", slash: false) == "a%20b/c")
    #expect(SigV4Signer.encode("é", slash: true) == "%C3%A9")
  }
}

/// Credentials, region and endpoint found the way the AWS SDKs find them.
@Suite struct S3ConfigurationTests {
  @Test func credentialsFromTheEnvironmentFirst() throws {
    let found = try AWSCredentials.resolve(environment: [
      "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "ST", "HOME": "/nonexistent"])
    #expect(found == AWSCredentials(accessKeyID: "AK", secretAccessKey: "SK", sessionToken: "ST"))
  }

  @Test func credentialsFromTheProfileFile() throws {
    let folder = NSTemporaryDirectory() + "uffd-test-aws-\(getpid())"
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try """
      [default]
      aws_access_key_id = DEFAULTKEY
      aws_secret_access_key = DEFAULTSECRET
      # a comment
      [ci]
      aws_access_key_id=CIKEY
      aws_secret_access_key=CISECRET
      """.write(toFile: folder + "/credentials", atomically: true, encoding: .utf8)
    try "[profile ci]\nregion = eu-west-3\n".write(toFile: folder + "/config", atomically: true, encoding: .utf8)
    let environment = ["AWS_SHARED_CREDENTIALS_FILE": folder + "/credentials", "AWS_CONFIG_FILE": folder + "/config"]
    #expect(try AWSCredentials.resolve(environment: environment).accessKeyID == "DEFAULTKEY")
    var ci = environment
    ci["AWS_PROFILE"] = "ci"
    #expect(try AWSCredentials.resolve(environment: ci) == AWSCredentials(accessKeyID: "CIKEY", secretAccessKey: "CISECRET"))
    #expect(AWSCredentials.region(environment: ci) == "eu-west-3")
    ci["AWS_REGION"] = "ap-south-1"
    #expect(AWSCredentials.region(environment: ci) == "ap-south-1")
    #expect(AWSCredentials.region(environment: ["HOME": "/nonexistent"]) == "us-east-1")
  }

  @Test func missingCredentialsSayWhereToPutThem() {
    #expect {
      try AWSCredentials.resolve(environment: ["HOME": "/nonexistent"])
    } throws: { error in
      "\(error)".contains("AWS_ACCESS_KEY_ID") && "\(error)".contains("/nonexistent/.aws/credentials")
    }
  }

  @Test func endpointPrecedenceAndAddressing() throws {
    let keys = ["AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_REGION": "eu-west-1"]
    let aws = try S3Source(bucket: "bkt", prefix: "p", environment: keys)
    #expect(aws.endpoint == "https://bkt.s3.eu-west-1.amazonaws.com" && !aws.pathStyle)
    var generic = keys
    generic["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9000"
    #expect(try S3Source(bucket: "bkt", prefix: "p", environment: generic).endpoint == "http://127.0.0.1:9000")
    var specific = generic
    specific["AWS_ENDPOINT_URL_S3"] = "http://127.0.0.1:9001/"
    let s3 = try S3Source(bucket: "bkt", prefix: "p", environment: specific)
    #expect(s3.endpoint == "http://127.0.0.1:9001" && s3.pathStyle)
    #expect(try S3Source(bucket: "bkt", prefix: "p", endpoint: "http://127.0.0.1:9002", environment: specific).endpoint == "http://127.0.0.1:9002")
    #expect(throws: SnapshotSourceError.self) { try S3Source(bucket: "bkt", prefix: "", endpoint: "ftp://x", environment: keys) }
    #expect(s3.key("../other/chunks/ab") == "other/chunks/ab")
    #expect(s3.key("chunks/ab") == "p/chunks/ab")
  }

  @Test func locationsParse() throws {
    let s3 = try SnapshotLocation("s3://bucket/a/b/manifest.json")
    #expect(s3.kind == .s3 && s3.folder == "s3://bucket/a/b" && s3.name == "manifest.json")
    let http = try SnapshotLocation("http://127.0.0.1:8080/snaps/manifest.json")
    #expect(http.kind == .http && http.folder == "http://127.0.0.1:8080/snaps")
    let local = try SnapshotLocation("manifest.json")
    #expect(local.kind == .file && local.folder == "." && !local.isRemote)
    for bad in ["", "s3://bucket", "s3://bucket/", "s3:///key", "ftp://host/x"] {
      #expect(throws: SnapshotSourceError.self, "\(bad)") { try SnapshotLocation(bad) }
    }
    #expect(ObjectPath.join("http://h:1/a/b", "../c/chunks/x") == "http://h:1/a/c/chunks/x")
    #expect(ObjectPath.join("http://h:1/a", "../../../x") == "http://h:1/x")
  }
}

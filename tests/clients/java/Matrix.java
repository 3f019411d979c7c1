// The Java clients of the client matrix: Apache Commons Net FTPSClient (explicit and implicit)
// and JSch (com.github.mwiede) for SFTP, driven as an integration would drive them. Contract
// (the same for every helper): tests/clients/README.md. Run with Java 17's single-file launcher:
//   java -cp commons-net.jar:jsch.jar Matrix.java ftps explicit|implicit | sftp password|key

import com.jcraft.jsch.ChannelSftp;
import com.jcraft.jsch.JSch;
import com.jcraft.jsch.Session;
import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.MessageDigest;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.Vector;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509TrustManager;
import org.apache.commons.net.ftp.FTP;
import org.apache.commons.net.ftp.FTPFile;
import org.apache.commons.net.ftp.FTPReply;
import org.apache.commons.net.ftp.FTPSClient;

public class Matrix {
    static String env(String name) {
        String value = System.getenv(name);
        if (value == null) {
            throw new IllegalStateException("missing " + name);
        }
        return value;
    }

    static String sha256(byte[] data) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new IllegalStateException(what);
        }
    }

    public static void main(String[] args) throws Exception {
        String protocol = args[0];
        String mode = args[1];
        byte[] payload = Files.readAllBytes(Path.of(env("MATRIX_PAYLOAD")));
        try {
            if (protocol.equals("ftps")) {
                ftps(mode.equals("implicit"), payload);
            } else {
                sftp(mode.equals("key"), payload);
            }
        } catch (Exception e) {
            System.out.println("error: " + e);
            System.exit(1);
        }
        System.out.println("done");
    }

    static X509TrustManager trust() throws Exception {
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        try (InputStream in = new FileInputStream(env("MATRIX_CA"))) {
            X509Certificate ca = (X509Certificate) CertificateFactory.getInstance("X.509").generateCertificate(in);
            store.setCertificateEntry("sluice", ca);
        }
        TrustManagerFactory factory = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        factory.init(store);
        return (X509TrustManager) factory.getTrustManagers()[0];
    }

    // -- FTPS: Apache Commons Net, the way Spring Integration and Camel set it up ------------
    static void ftps(boolean implicit, byte[] payload) throws Exception {
        FTPSClient ftp = new FTPSClient("TLS", implicit);
        ftp.setTrustManager(trust());
        ftp.setConnectTimeout(15000);
        ftp.setDefaultTimeout(15000);
        String remote = env("MATRIX_REMOTE");
        try {
            ftp.connect(env("MATRIX_HOST"), Integer.parseInt(env("MATRIX_PORT")));
            check(FTPReply.isPositiveCompletion(ftp.getReplyCode()), "banner: " + ftp.getReplyString());
            check(ftp.login(env("MATRIX_USER"), env("MATRIX_PASSWORD")), "login: " + ftp.getReplyString());
            System.out.println("login ok");
            ftp.execPBSZ(0);
            ftp.execPROT("P");
            ftp.enterLocalPassiveMode();
            check(ftp.setFileType(FTP.BINARY_FILE_TYPE), "TYPE I: " + ftp.getReplyString());

            boolean stored;
            try {
                stored = ftp.storeFile(remote, new java.io.ByteArrayInputStream(payload));
            } catch (java.io.IOException e) {
                // The data connection was refused after 150: the reason is on the control
                // connection.
                System.out.println("upload exception: " + e);
                ftp.getReply();
                stored = false;
            }
            if (!stored) {
                System.out.println("reply: " + ftp.getReplyString().trim());
                throw new IllegalStateException("upload failed");
            }
            System.out.println("upload ok");

            FTPFile[] files = ftp.mlistDir();
            FTPFile listed = Arrays.stream(files).filter(f -> f.getName().equals(remote)).findFirst().orElse(null);
            check(listed != null, "listing lacks " + remote + ": " + Arrays.toString(files));
            check(listed.getSize() == payload.length, "listed size " + listed.getSize());
            System.out.println("listed " + remote + " " + listed.getSize());

            ByteArrayOutputStream out = new ByteArrayOutputStream();
            check(ftp.retrieveFile(remote, out), "download: " + ftp.getReplyString());
            System.out.println("sha256 " + sha256(out.toByteArray()));

            long offset = Long.parseLong(env("MATRIX_RESUME_OFFSET"));
            ftp.setRestartOffset(offset);
            ByteArrayOutputStream tail = new ByteArrayOutputStream();
            check(ftp.retrieveFile(remote, tail), "resumed download: " + ftp.getReplyString());
            check(Arrays.equals(tail.toByteArray(), Arrays.copyOfRange(payload, (int) offset, payload.length)),
                    "resumed download differs");
            System.out.println("resume ok");
            ftp.logout();
        } finally {
            if (ftp.isConnected()) {
                ftp.disconnect();
            }
        }
    }

    // -- SFTP: JSch, with the server's host key pinned in known_hosts ------------------------
    static void sftp(boolean key, byte[] payload) throws Exception {
        JSch jsch = new JSch();
        jsch.setKnownHosts(env("MATRIX_KNOWN_HOSTS"));
        if (key) {
            jsch.addIdentity(env("MATRIX_KEY"));
        }
        Session session = jsch.getSession(env("MATRIX_USER"), env("MATRIX_HOST"), Integer.parseInt(env("MATRIX_PORT")));
        session.setConfig("StrictHostKeyChecking", "yes");
        session.setConfig("PreferredAuthentications", key ? "publickey" : "password");
        if (!key) {
            session.setPassword(env("MATRIX_PASSWORD"));
        }
        String remote = env("MATRIX_REMOTE");
        session.connect(15000);
        try {
            System.out.println("login ok");
            ChannelSftp sftp = (ChannelSftp) session.openChannel("sftp");
            sftp.connect(15000);
            sftp.put(new java.io.ByteArrayInputStream(payload), remote);
            System.out.println("upload ok");
            Vector<ChannelSftp.LsEntry> entries = sftp.ls(".");
            ChannelSftp.LsEntry listed = entries.stream().filter(e -> e.getFilename().equals(remote)).findFirst().orElse(null);
            check(listed != null, "listing lacks " + remote);
            check(listed.getAttrs().getSize() == payload.length, "listed size " + listed.getAttrs().getSize());
            System.out.println("listed " + remote + " " + listed.getAttrs().getSize());

            ByteArrayOutputStream out = new ByteArrayOutputStream();
            sftp.get(remote, out);
            System.out.println("sha256 " + sha256(out.toByteArray()));

            long offset = Long.parseLong(env("MATRIX_RESUME_OFFSET"));
            ByteArrayOutputStream tail = new ByteArrayOutputStream();
            sftp.get(remote, tail, null, ChannelSftp.RESUME, offset);
            check(Arrays.equals(tail.toByteArray(), Arrays.copyOfRange(payload, (int) offset, payload.length)),
                    "resumed download differs");
            System.out.println("resume ok");
            sftp.disconnect();
        } finally {
            session.disconnect();
        }
    }
}
